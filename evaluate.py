"""Score subnets of a trained supernet: BN recalibration on the run's own training data, then
EPE, px1/px3/px5 and Fl-all of the accumulated full-resolution flow over the valid pixels of a
validation set: the run's FC2 validation split (centre crops), or MPI-Sintel or KITTI 2015 at full
frame. Also the Middlebury-coloured flow pictures. `evaluate(...)` returns a dict and is what
train.py calls at every evaluation.

    python evaluate.py --checkpoint_type last --bn_recal_batches 2 --batch_size 2
    python evaluate.py --experiment_name demo --arch 0,1,2,0,1,2,0,1,2 --arch 2,2,2,2,2,2,2,2,2
    python evaluate.py --experiment_name demo --dataset sintel --base_path /data/Sintel --visualize 2
"""
import argparse
import io
import json
import os
import sys
import time

import matplotlib
import numpy as np
import devices  # before tensorflow: quietens its start-up (see devices.py)
import tensorflow as tf
from matplotlib.figure import Figure

import ckpt
import data_fc2
import fair
import supernet

PX_THRESHOLDS = (1, 3, 5)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")


# ----------------------------------------------------------------------------- data for scoring

def numpy_batches(dataset, limit, samples, crop_hw):
    """The first `limit` batches of an eager tf.data dataset as numpy (images, flows); 0 = all. If
    reading fails, the error names the first of `samples` (the files read) at fault."""
    try:
        return [(images.numpy(), flows.numpy()) for images, flows in dataset.take(limit or -1)]
    except tf.errors.OpError as err:
        raise data_fc2.find_fault(samples, crop_hw) or data_fc2.DataError(ckpt.one_line(err)) from None


def recalibration_batches(cfg, data):
    """`bn_recal_batches` seeded training batches of the run's data (random crops at the run's
    input size, as training sees them): what every BN recalibration uses, whatever is scored."""
    recal = data_fc2.make_dataset(data["train"], cfg["batch_size"], (cfg["input_h"], cfg["input_w"]), train=True,
                                  max_flow=cfg["max_flow"], seed=cfg["seed"])
    samples = data_fc2.training_batch_samples(data["train"], cfg["seed"], range(cfg["bn_recal_batches"]),
                                              cfg["batch_size"])
    return numpy_batches(recal, cfg["bn_recal_batches"], samples, (cfg["input_h"], cfg["input_w"]))


def scoring_batches(cfg, data):
    """(recal_batches, val_batches) for a run: `bn_recal_batches` seeded training batches (random
    crops, as training sees them) and the validation split (all, or `eval_batches`), centre-cropped,
    as (images, flows) pairs. Drawn once, so every subnet of every evaluation sees the same pixels."""
    return recalibration_batches(cfg, data), centre_crop_batches(cfg, data)


def centre_crop_batches(cfg, data):
    """The validation split of the run's data (all, or `eval_batches`) as (images, flows) pairs,
    centre-cropped to the run's input size, labels unclipped. The pipeline refuses a non-finite
    flow; numpy_batches names its file."""
    crop = (cfg["input_h"], cfg["input_w"])
    val = data_fc2.make_dataset(data["val"], cfg["batch_size"], crop, train=False, max_flow=cfg["max_flow"],
                                seed=cfg["seed"])
    return numpy_batches(val, cfg["eval_batches"], data["val"] if isinstance(data["val"], list) else [], crop)


def add_dataset_flags(parser):
    """Add the flags that choose the scored dataset to an argparse parser: --dataset, --base_path,
    --sintel_pass (dataset_batches reads them)."""
    group = parser.add_argument_group("scored dataset (BN recalibration always uses the run's own training data)")
    group.add_argument("--dataset", default="fc2", choices=data_fc2.EVAL_DATASETS,
                       help="fc2: centre crops at the run's input size; sintel, kitti: full frames (default fc2)")
    group.add_argument("--base_path", help="root of the scored dataset, holding training/ for sintel and kitti "
                                           "(fc2: default the run's own data)")
    group.add_argument("--sintel_pass", default="final", choices=data_fc2.SINTEL_PASSES, help="default final")


def batch_parts(batch):
    """(images, flows, valid) of a validation batch; an (images, flows) pair is all-valid."""
    if len(batch) == 3:
        return batch
    images, flows = batch
    return images, flows, np.ones(flows.shape[:3], np.float32)


def _fc2_validation(cfg, data):
    """Centre-cropped validation batches with validity, and their sample names."""
    val = [batch_parts(b) for b in centre_crop_batches(cfg, data)]
    count = sum(len(b[1]) for b in val)
    if data["data_source"] == "synthetic":
        return val, [f"synthetic_{i:05d}" for i in range(count)]
    return val, [os.path.basename(s[0])[:-len("-img_0.png")] for s in data["val"][:count]]


def _full_frame_validation(cfg, args):
    """EvalBatches of Sintel or KITTI, and their sample names (Sintel: scene/frame_NNNN)."""
    if args.dataset == "sintel":
        samples = data_fc2.list_sintel_samples(args.base_path, args.sintel_pass)
    else:
        samples = data_fc2.list_kitti_samples(args.base_path)
    val = data_fc2.EvalBatches(samples, cfg["batch_size"], cfg["eval_batches"])
    names = [os.path.splitext(os.path.relpath(s[0], os.path.dirname(os.path.dirname(s[0]))))[0]
             if args.dataset == "sintel" else os.path.splitext(os.path.basename(s[0]))[0] for s in val.samples]
    return val, names


def dataset_batches(cfg, args):
    """(recal_batches, val_batches, info) to score the run configured by `cfg` on the dataset that
    add_dataset_flags' flags (`args.dataset`, `args.base_path`, `args.sintel_pass`) choose.

    recal_batches: (images, flows) training batches of the run's own data at its input size.
    val_batches: a sequence of (images [B, H, W, 6], flows [B, H, W, 2], valid float32 [B, H, W]);
    one size within a batch, sizes may differ between batches (KITTI). info: dataset, pass,
    base_path, data_source, recal_data_source, recal_input_size, input_sizes (padded, what the
    graph runs at), frame_sizes, samples, sample_names and sample_frame_sizes (in batch order),
    suffix (for result names: "" for the run's own FC2 data, "_fc2", "_sintel_final", "_kitti"), reason.
    """
    suffix = result_suffix(args)
    if args.dataset != "fc2" and not args.base_path:
        raise data_fc2.DataError(f"--dataset {args.dataset} needs --base_path (the folder that holds training/)")
    if args.dataset == "fc2":
        run_data = data_fc2.open_data(cfg)
        scored = (data_fc2.open_data(dict(cfg, base_path=args.base_path, synthetic=False)) if args.base_path
                  else run_data)
        val, names = _fc2_validation(cfg, scored)
        frame_sizes, data_source = [(cfg["input_h"], cfg["input_w"])] * len(names), scored["data_source"]
        reason = scored["reason"] + f", validation centre-cropped to {cfg['input_h']}x{cfg['input_w']}"
    else:
        val, names = _full_frame_validation(cfg, args)
        frame_sizes, data_source = val.frame_sizes, args.dataset
        reason = f"{args.dataset} from {args.base_path}, full frames padded to multiples of {data_fc2.PAD_MULTIPLE}"
        run_data = data_fc2.open_data(cfg)
    recal = recalibration_batches(cfg, run_data)
    sintel_pass = args.sintel_pass if args.dataset == "sintel" else None
    input_sizes = val.batch_sizes if isinstance(val, data_fc2.EvalBatches) else [b[0].shape[1:3] for b in val]
    info = {"dataset": args.dataset, "pass": sintel_pass, "base_path": args.base_path or cfg["base_path"],
            "data_source": data_source, "recal_data_source": run_data["data_source"],
            "recal_input_size": [cfg["input_h"], cfg["input_w"]], "input_sizes": _distinct_sizes(input_sizes),
            "frame_sizes": _distinct_sizes(frame_sizes), "samples": len(names), "sample_names": names,
            "sample_frame_sizes": [[int(v) for v in size] for size in frame_sizes], "suffix": suffix,
            "reason": f"scoring {reason}; BN recalibration on the run's data ({run_data['reason']})"}
    return recal, val, info


def result_suffix(args):
    """What result names add for the dataset that `args` chooses: "" for the run's own FC2 data,
    "_fc2" for another FC2 tree, "_sintel_<pass>", "_kitti". Reads no data."""
    if args.dataset not in data_fc2.EVAL_DATASETS:
        raise data_fc2.DataError(f"--dataset {args.dataset!r} is not one of {', '.join(data_fc2.EVAL_DATASETS)}")
    if args.dataset == "fc2" and not args.base_path:
        return ""
    return "_" + "_".join(filter(None, [args.dataset, args.sintel_pass if args.dataset == "sintel" else None]))


def _distinct_sizes(sizes):
    return [list(size) for size in sorted({(int(h), int(w)) for h, w in sizes})]


def zero_flow_sums(flows, valid):
    """(summed true flow length, pixel count) over the valid pixels of one batch."""
    return float((np.sqrt(np.square(flows.astype(np.float64)).sum(-1)) * valid).sum()), float(valid.sum())


def zero_flow_epe(val_batches):
    """EPE of predicting zero motion at every valid pixel: the baseline a network must beat."""
    sums = [zero_flow_sums(*batch_parts(batch)[1:]) for batch in val_batches]
    return sum(s[0] for s in sums) / sum(s[1] for s in sums)


# ----------------------------------------------------------------------------- graph

def flow_metric_sums(pred, gt, valid=None):
    """Sums for EPE and px1/px3/px5 (fraction of pixels with EPE below 1/3/5 px) over the valid
    pixels of a batch: the one definition of the metrics.

    pred [..., B, H, W, 2] (any leading dims: one set of sums per leading index), gt [B, H, W, 2],
    valid [B, H, W] of 0/1 or None (every pixel valid). Fl-all counts valid pixels whose EPE is
    above 3 px and above 5% of the true flow's length (KITTI's outlier rate). Per-pixel work on
    gt alone is done once, whatever the leading dims: the search scores 9 subnets per call.
    """
    epe = tf.sqrt(tf.reduce_sum(tf.square(pred - gt), axis=-1))  # [..., B, H, W]
    outlier_above = tf.maximum(3.0, 0.05 * tf.sqrt(tf.reduce_sum(tf.square(gt), axis=-1)))  # [B, H, W]
    axes = [-3, -2, -1]
    if valid is None:
        pixels = tf.cast(tf.reduce_prod(tf.shape(epe)[-3:]), tf.float32)
        epe_sum, counted = tf.reduce_sum(epe, axis=axes), epe
    else:
        mask = tf.cast(valid, tf.bool)
        pixels = tf.reduce_sum(tf.cast(mask, tf.float32))
        epe_sum = tf.reduce_sum(tf.where(mask, epe, 0.0), axis=axes)
        counted = tf.where(mask, epe, np.inf)  # an invalid pixel is below no threshold ...
        outlier_above = tf.where(mask, outlier_above, np.inf)  # ... and above no outlier threshold

    def count(condition):
        return tf.reduce_sum(tf.cast(condition, tf.float32), axis=axes)

    sums = {"epe": epe_sum, "pixels": pixels + tf.zeros_like(epe_sum), "outliers": count(counted > outlier_above)}
    for t in PX_THRESHOLDS:
        sums[f"px{t}"] = count(counted < t)
    return sums


def metrics_from_sums(totals):
    """Metrics from summed `flow_metric_sums` over batches: epe, px1/3/5 and fl_all (fractions)."""
    pixels = totals["pixels"]
    metrics = {"epe": totals["epe"] / pixels}
    metrics.update({f"px{t}": totals[f"px{t}"] / pixels for t in PX_THRESHOLDS})
    metrics["fl_all"] = totals["outliers"] / pixels
    return metrics


def _eval_pass(images, flows, arch):
    """Inference-mode prediction and metric sums at the static size of `images`; the validity
    mask defaults to all ones."""
    h, w = int(images.shape[1]), int(images.shape[2])
    valid = tf.compat.v1.placeholder_with_default(tf.ones_like(flows[..., 0]), [None, h, w], f"valid_{h}x{w}")
    pred = supernet.build_flows(images, arch, mode="eval")[-1]
    return {"images": images, "flows": flows, "valid": valid, "pred": pred,
            "sums": flow_metric_sums(pred, flows, valid)}


def build_scorer(images, flows, eval_sizes=(), static_arch=None):
    """The graph pieces that score one subnet, sharing the supernet's variables.

    images [B, H, W, 6], flows [B, H, W, 2]: tensors the caller feeds, at the size BN
    recalibration runs at (the run's input size). eval_sizes: further (h, w) sizes to score at
    (full frames), each with its own placeholders. Returns a dict with the `arch` [9] and
    `recal_index` placeholders, the `recal` op (one training-mode pass that moves the chosen
    subnet's BN statistics) and `eval`: {(h, w): images, flows, valid, pred, sums} of the
    inference-mode pass at each size; the top-level images/flows/valid/pred/sums are those at
    the recalibration size. With `static_arch` (a standalone subnet) only that arch's layers are
    built and only it can be scored.
    """
    arch = tf.compat.v1.placeholder(tf.int32, [len(supernet.BLOCKS)], "score_arch")
    built = arch if static_arch is None else tuple(static_arch)
    recal_index = tf.compat.v1.placeholder(tf.int32, [], "recal_index")
    recal_flow = supernet.build_flows(images, built, mode="recal", recal_index=recal_index)[-1]
    base = _eval_pass(images, flows, built)
    passes = {tuple(int(v) for v in images.shape[1:3]): base}
    for h, w in eval_sizes:
        if (h, w) not in passes:
            passes[(h, w)] = _eval_pass(
                tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.INPUT_CHANNELS], f"images_{h}x{w}"),
                tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.FLOW_CHANNELS], f"flows_{h}x{w}"), built)
    return dict(base, arch=arch, recal_index=recal_index, recal=tf.group(recal_flow), eval=passes,
                static_arch=static_arch)


# ----------------------------------------------------------------------------- scoring

def score_subnet(sess, scorer, arch, recal_batches, val_batches, on_prediction=None):
    """Recalibrate one subnet's BN statistics, then its metrics over the validation batches
    ((images, flows) pairs or (images, flows, valid) triples; each batch's size must be one the
    scorer was built for). on_prediction(batch_index, batch, pred) is called with every batch's
    predicted flow if given.

    Recalibration overwrites every BN statistic the subnet uses (batch 0 sets them, batch k moves
    them by 1/(k+1)), so the result does not depend on which subnets were scored before.
    """
    static = scorer.get("static_arch")
    if static is not None and tuple(arch) != tuple(static):
        raise ValueError(f"this graph holds only subnet {supernet.format_arch(static)}; "
                         f"cannot score {supernet.format_arch(arch)}")
    for k, batch in enumerate(recal_batches):
        sess.run(scorer["recal"], {scorer["images"]: batch[0], scorer["arch"]: arch, scorer["recal_index"]: k})
    totals = {}
    for index, batch in enumerate(val_batches):
        images, flows, valid = batch_parts(batch)
        size = tuple(images.shape[1:3])
        if size not in scorer["eval"]:
            raise ValueError(f"validation batch {index} is {size[0]}x{size[1]}: the scorer was built for "
                             f"{', '.join(f'{h}x{w}' for h, w in scorer['eval'])}")
        part = scorer["eval"][size]
        fetches = {"sums": part["sums"], "pred": part["pred"]} if on_prediction else {"sums": part["sums"]}
        out = sess.run(fetches, {part["images"]: images, part["flows"]: flows, part["valid"]: valid,
                                 scorer["arch"]: arch})
        if on_prediction:
            on_prediction(index, (images, flows, valid), out["pred"])
        for key, value in out["sums"].items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return metrics_from_sums(totals)


def evaluate(sess, scorer, archs, recal_batches, val_batches, h, w, log=None, on_prediction=None):
    """Score every arch; returns {"archs": [rows], "mean_epe", "std_epe", "zero_flow_epe", "seconds",
    "first_predictions": {arch code: predicted flow of the first validation sample}}.

    Each row: arch code, epe, px1, px3, px5, fl_all, params, gmacs (at h x w), seconds, rank
    (1 = lowest EPE). on_prediction(arch, batch_index, batch, pred) sees every predicted batch.
    """
    if not recal_batches or not len(val_batches):
        raise ValueError("evaluation needs at least one recalibration batch and one validation batch")
    start = time.time()
    rows, first, zero_flow = [], {}, []
    for i, arch in enumerate(archs):
        t0 = time.time()
        code = supernet.format_arch(arch)

        def keep(index, batch, pred, arch=arch, code=code, i=i):
            if index == 0:
                first[code] = pred[0]
            if i == 0:  # the baseline from the batches as the first subnet sees them: no second read
                zero_flow.append(zero_flow_sums(*batch[1:]))
            if on_prediction:
                on_prediction(arch, index, batch, pred)

        row = {"arch": code, **score_subnet(sess, scorer, arch, recal_batches, val_batches, keep),
               "params": supernet.count_params(arch, h, w), "gmacs": supernet.count_macs(arch, h, w) / 1e9,
               "seconds": time.time() - t0}
        rows.append(row)
        if log:
            log(f"  [{i + 1}/{len(archs)}] {row['arch']}  EPE {row['epe']:.4f}  px1 {row['px1']:.3f}  "
                f"Fl-all {row['fl_all']:.3f}  {row['gmacs']:.2f} GMAC  {row['seconds']:.1f}s")
    for rank, row in enumerate(sorted(rows, key=lambda r: r["epe"]), 1):
        row["rank"] = rank
    epes = np.array([r["epe"] for r in rows])
    return {"archs": rows, "mean_epe": float(epes.mean()), "std_epe": float(epes.std()),
            "zero_flow_epe": sum(z[0] for z in zero_flow) / sum(z[1] for z in zero_flow),
            "seconds": time.time() - start, "first_predictions": first}


# ----------------------------------------------------------------------------- flow pictures
#
# The Middlebury colour code (Baker et al., "A Database and Evaluation Methodology for Optical
# Flow", 2011), drawn as RAFT's flow_viz and the flow_vis package draw it: the hue is the
# direction on a 55-colour wheel (right red, down yellow, left cyan, up blue-violet), the
# saturation the length relative to a normalisation radius; longer flow is darkened to 75 %.

WHEEL_SEGMENTS = ((15, 0, 1, True), (6, 1, 0, False), (4, 1, 2, True),   # (length, channel held at 255,
                  (11, 2, 1, False), (13, 2, 0, True), (6, 0, 2, False))  # channel ramped, ramp rising)


def make_colorwheel():
    """The 55 x 3 Middlebury colour wheel (0..255): red, yellow, green, cyan, blue, magenta at
    rows 0, 15, 21, 25, 36, 49, with one channel ramped linearly between them."""
    segments = []
    for length, held, ramped, rising in WHEEL_SEGMENTS:
        segment = np.zeros((length, 3))
        segment[:, held] = 255
        steps = np.floor(255 * np.arange(length) / length)
        segment[:, ramped] = steps if rising else 255 - steps
        segments.append(segment)
    return np.concatenate(segments)


def flow_to_color(flow, max_radius=None):
    """RGB uint8 [H, W, 3] of flow [H, W, 2] (u right, v down) in the Middlebury colour code,
    lengths divided by `max_radius` (default: the largest length in `flow`)."""
    flow = np.asarray(flow, np.float64)
    if max_radius is None:
        max_radius = float(np.sqrt(np.square(flow).sum(-1)).max())
    u, v = flow[..., 0] / (max_radius + 1e-5), flow[..., 1] / (max_radius + 1e-5)
    wheel = make_colorwheel() / 255.0
    radius = np.sqrt(u * u + v * v)
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (len(wheel) - 1)
    k0 = np.floor(position).astype(int)
    k1 = (k0 + 1) % len(wheel)
    f = (position - k0)[..., None]
    colour = (1 - f) * wheel[k0] + f * wheel[k1]
    inside = (radius <= 1)[..., None]
    colour = np.where(inside, 1 - radius[..., None] * (1 - colour), colour * 0.75)
    return np.floor(255 * colour).astype(np.uint8)


def flow_panel_png(image0, gt, pred, valid, title):
    """(PNG bytes, height, width) of one sample's panel: frame 0, the true and the predicted flow
    in the Middlebury colours under one normalisation (the longest valid true flow), and the EPE
    map; invalid pixels are black. image0 [H, W, 3] in [-1, 1], gt and pred [H, W, 2], valid [H, W]."""
    mask = valid > 0
    lengths = np.sqrt(np.square(gt).sum(-1))[mask]
    radius = float(lengths.max()) if lengths.size and lengths.max() > 0 else None
    epe = np.where(mask, np.sqrt(np.square(pred - gt).sum(-1)), np.nan)
    height, width = gt.shape[:2]
    figure = Figure(figsize=(10, 2 * 5 * height / width + 1.0), dpi=100, layout="constrained")
    axes = figure.subplots(2, 2)
    shown = [(np.clip((image0 + 1) * 127.5, 0, 255).astype(np.uint8), "frame 0"),
             (flow_to_color(gt, radius) * mask[..., None], f"ground truth (max {radius or 0:.1f} px)"),
             (flow_to_color(pred, radius), "prediction, same colour scale"),
             (epe, f"EPE, mean {np.nanmean(epe):.2f} px")]
    for ax, (picture, label) in zip(axes.flat, shown):
        shown_image = ax.imshow(picture, cmap=matplotlib.colormaps["magma"].with_extremes(bad="black"))
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    figure.colorbar(shown_image, ax=axes[1, 1], shrink=0.9)
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue(), int(figure.bbox.height), int(figure.bbox.width)


def best_arch_panel(result, val_batches):
    """flow_panel_png of the first validation sample and the lowest-EPE arch of an `evaluate` result."""
    best = min(result["archs"], key=lambda r: r["epe"])
    images, flows, valid = batch_parts(val_batches[0])
    return flow_panel_png(images[0, ..., :3], flows[0], result["first_predictions"][best["arch"]], valid[0],
                          f"best arch {best['arch']}: EPE {best['epe']:.3f}")


class PredictionWriter:
    """on_prediction callback for `evaluate`: for every scored arch, the panels of the first
    `visualize` validation samples as PNG into `picture_dir`, and with `flow_dir` every predicted
    flow (the padding removed) as `.flo` under flow_dir/<arch digits>/<sample name>.flo."""

    def __init__(self, info, visualize, picture_dir, flow_dir):
        self.info, self.visualize, self.picture_dir, self.flow_dir = info, visualize, picture_dir, flow_dir
        self.start = 0
        self.written = []

    def __call__(self, arch, batch_index, batch, pred):
        digits = supernet.format_arch(arch).replace(",", "")
        self.start = 0 if batch_index == 0 else self.start
        images, flows, valid = batch
        for j in range(len(pred)):
            k = self.start + j
            name = self.info["sample_names"][k]
            h, w = self.info["sample_frame_sizes"][k]
            if self.flow_dir:
                path = os.path.join(self.flow_dir, digits, name + ".flo")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                data_fc2.write_flo(path, pred[j, :h, :w])
            if k < self.visualize:
                png, _, _ = flow_panel_png(images[j, :h, :w, :3], flows[j, :h, :w], pred[j, :h, :w], valid[j, :h, :w],
                                           f"{self.info['dataset']} {name}, arch {supernet.format_arch(arch)}")
                path = os.path.join(self.picture_dir, f"{name.replace('/', '_')}_arch{digits}.png")
                os.makedirs(self.picture_dir, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(png)
                self.written.append(path)
        self.start += len(pred)


# ----------------------------------------------------------------------------- CLI

def add_run_flags(parser, what):
    """The flags that choose a run, its checkpoint, the scoring batches and the dataset (shared by
    every entry point that scores a trained run); unset scoring flags keep the run's config."""
    parser.add_argument("--experiment_name", help=f"run under output_dir to {what} (default: the newest)")
    with open(DEFAULT_CONFIG) as f:
        output_dir = json.load(f)["output_dir"]
    parser.add_argument("--output_dir", default=output_dir, help="where runs live (default: config.json's)")
    parser.add_argument("--checkpoint_type", default="best", choices=ckpt.CHECKPOINT_KINDS)
    parser.add_argument("--batch_size", type=int, help="batch size for recalibration and scoring")
    parser.add_argument("--bn_recal_batches", type=int, help="training batches per BN recalibration")
    parser.add_argument("--eval_batches", type=int, help="validation batches per subnet (0 = all)")
    add_dataset_flags(parser)


def parse_args(argv):
    """Command-line flags; unset ones fall back to the run's saved config."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_flags(parser, "score")
    parser.add_argument("--arch", action="append", default=[], help="arch code to score (repeatable; default: the run's eval pool)")
    parser.add_argument("--visualize", type=int, default=0, metavar="N",
                        help="write a picture panel of the first N validation samples for each scored arch")
    parser.add_argument("--save_flow", metavar="DIR", help="write every predicted flow as .flo under DIR/<arch>/")
    args = parser.parse_args(argv)
    if args.visualize < 0:
        parser.error(f"--visualize {args.visualize} is out of range (0 or more samples)")
    return args


def run_dir_of(args):
    """The run folder the flags name: --experiment_name, or the newest run with that checkpoint."""
    if not args.experiment_name:
        return ckpt.newest_run(args.output_dir, args.checkpoint_type)
    run_dir = ckpt.run_folder(args.output_dir, args.experiment_name)
    if not os.path.isdir(run_dir):
        raise ckpt.CheckpointError(f"run folder not found: {run_dir}")
    return run_dir


def run_config(args, run_dir):
    """The run's saved config, every key of config.json there with its type (else a ValueError
    naming the file and key), with the scoring flags applied."""
    path = os.path.join(run_dir, "config.json")
    cfg = ckpt.read_json(path, "run config")
    if not isinstance(cfg, dict):
        raise ckpt.ConfigError(f"{path}: must hold a JSON object")
    # keys config.json no longer has are kept: runs made before are still scored
    for key, default in ckpt.read_json(DEFAULT_CONFIG, "default config").items():
        cfg[key] = ckpt.checked_value(path, key, cfg.get(key), default)
    for key in ("batch_size", "bn_recal_batches", "eval_batches"):
        value = getattr(args, key)
        if value is not None:
            if value < (0 if key == "eval_batches" else 1):
                raise ValueError(f"--{key} {value} is out of range")
            cfg[key] = value
    return cfg


def standalone_arch(cfg):
    """The arch of a standalone run (trained alone with train.py --arch), or None for a supernet."""
    return supernet.parse_arch(cfg["arch"]) if cfg.get("arch") else None


def chosen_archs(args, run_dir, cfg):
    """(archs to score, whether they are the run's eval pool): --arch codes, or the pool."""
    pool_file = os.path.join(run_dir, f"eval_pool_{cfg['eval_pool_size']}.json")
    archs = [supernet.parse_arch(code) for code in args.arch]
    standalone = standalone_arch(cfg)
    if standalone:
        if any(a != standalone for a in archs):
            raise ValueError(f"{run_dir} is a standalone run of {cfg['arch']}: it scores only that arch")
        return [standalone], False
    if not archs:
        return [supernet.parse_arch(code) for code in ckpt.read_json(pool_file, "eval pool")["archs"]], True
    pool = ([supernet.parse_arch(code) for code in ckpt.read_json(pool_file, "eval pool")["archs"]]
            if os.path.exists(pool_file) else [])
    return archs, sorted(archs) == sorted(pool)


def score_checkpoint(args, run_dir, cfg, archs, recal_batches, val_batches, info, on_prediction):
    """Restore the checkpoint into a scorer built for the recalibration size and every scored
    size, and score `archs`; returns (evaluate's result, the checkpoint meta)."""
    h, w = cfg["input_h"], cfg["input_w"]
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.INPUT_CHANNELS], "images")
        flows = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.FLOW_CHANNELS], "flows")
        scorer = build_scorer(images, flows, [tuple(size) for size in info["input_sizes"]],
                              static_arch=standalone_arch(cfg))
        saver = tf.compat.v1.train.Saver(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
    graph.finalize()
    with tf.compat.v1.Session(graph=graph, config=devices.session_config()) as sess:
        meta = ckpt.restore(sess, saver, run_dir, args.checkpoint_type)
        sizes = ", ".join(f"{a}x{b}" for a, b in info["input_sizes"])
        print(f"scoring {len(archs)} subnets of {meta['prefix']} (epoch {meta['epoch']}, step {meta['global_step']}): "
              f"{len(recal_batches)} recalibration batches at {h}x{w}, {info['samples']} validation samples at {sizes}")
        return evaluate(sess, scorer, archs, recal_batches, val_batches, h, w, log=print,
                        on_prediction=on_prediction), meta


def result_summary(args, run_dir, cfg, meta, result, info, archs, is_pool):
    """The `summary` of a result file: what was scored, on what, and the figures."""
    summary = {"mode": "standalone" if standalone_arch(cfg) else "supernet",
               "run_dir": run_dir, "checkpoint": meta["prefix"], "checkpoint_type": args.checkpoint_type,
               "epoch": meta["epoch"], "global_step": meta["global_step"], "num_archs": len(archs),
               "mean_epe": result["mean_epe"], "std_epe": result["std_epe"], "zero_flow_epe": result["zero_flow_epe"],
               "batch_size": cfg["batch_size"], "bn_recal_batches": cfg["bn_recal_batches"],
               "val_samples": info["samples"], "gmacs_input_size": [cfg["input_h"], cfg["input_w"]],
               "archs_are_eval_pool": is_pool, "seconds": result["seconds"],
               **{key: info[key] for key in ("dataset", "pass", "base_path", "data_source", "recal_data_source",
                                             "recal_input_size", "input_sizes", "frame_sizes")}}
    if is_pool:
        coverage = fair.pool_coverage(archs, cfg["input_h"], cfg["input_w"])
        summary.update(coverage_ok=coverage["ok"], coverage_problems=coverage["problems"])
    return summary


def run(args):
    """Score the chosen checkpoint on the chosen dataset and write
    supernet_eval_result_<type><dataset suffix>.json (and pictures, flows); returns the result."""
    hardware = devices.report()
    run_dir = run_dir_of(args)
    cfg = run_config(args, run_dir)
    archs, is_pool = chosen_archs(args, run_dir, cfg)
    recal_batches, val_batches, info = dataset_batches(cfg, args)
    print(info["reason"])
    picture_dir = os.path.join(run_dir, f"flow_pictures_{args.checkpoint_type}{info['suffix']}")
    writer = PredictionWriter(info, args.visualize, picture_dir, args.save_flow)
    result, meta = score_checkpoint(args, run_dir, cfg, archs, recal_batches, val_batches, info,
                                    writer if args.visualize or args.save_flow else None)
    summary = dict(result_summary(args, run_dir, cfg, meta, result, info, archs, is_pool), devices=hardware)
    output = {"summary": summary, "archs": sorted(result["archs"], key=lambda r: r["rank"])}
    path = os.path.join(run_dir, f"supernet_eval_result_{args.checkpoint_type}{info['suffix']}.json")
    ckpt.write_json_atomic(path, output)
    print(f"mean EPE {summary['mean_epe']:.4f} (std {summary['std_epe']:.4f}) over {len(archs)} subnets; "
          f"zero-flow EPE {summary['zero_flow_epe']:.4f}; wrote {path}")
    if writer.written:
        print(f"wrote {len(writer.written)} pictures to {picture_dir}")
    if args.save_flow:
        print(f"wrote {info['samples']} predicted flows per arch under {args.save_flow}")
    return output


def exit_code(action, *args, errors=()):
    """Run an entry point's action(*args): bad input (a bad flag, file, run or dataset, or one of
    `errors`) becomes one `error: ...` line on stderr and exit code 1; success is 0."""
    try:
        action(*args)
    except (ValueError, OSError, ckpt.CheckpointError, data_fc2.DataError, *errors) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad input."""
    return exit_code(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
