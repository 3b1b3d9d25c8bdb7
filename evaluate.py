"""Score subnets of a trained supernet: BN recalibration, then EPE and px1/px3/px5 of the
accumulated full-resolution flow on the validation split. `evaluate(...)` returns a dict and is
what train.py calls at every evaluation.

    python evaluate.py --checkpoint_type last --bn_recal_batches 2 --batch_size 2
    python evaluate.py --experiment_name demo --arch 0,1,2,0,1,2,0,1,2 --arch 2,2,2,2,2,2,2,2,2
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

import ckpt
import data_fc2
import fair
import supernet

PX_THRESHOLDS = (1, 3, 5)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")


# ----------------------------------------------------------------------------- data for scoring

def numpy_batches(dataset, limit):
    """The first `limit` batches of an eager tf.data dataset as numpy (images, flows); 0 = all."""
    return [(images.numpy(), flows.numpy()) for images, flows in dataset.take(limit or -1)]


def scoring_batches(cfg, data):
    """(recal_batches, val_batches) for a run: `bn_recal_batches` seeded training batches (random
    crops, as training sees them) and the validation split (all, or `eval_batches`), centre-cropped.
    Drawn once, so every subnet of every evaluation sees exactly the same pixels."""
    crop = (cfg["input_h"], cfg["input_w"])
    recal = data_fc2.make_dataset(data["train"], cfg["batch_size"], crop, train=True,
                                  max_flow=cfg["max_flow"], seed=cfg["seed"], shuffle_buffer=cfg["shuffle_buffer"])
    val = data_fc2.make_dataset(data["val"], cfg["batch_size"], crop, train=False, max_flow=cfg["max_flow"], seed=cfg["seed"])
    return numpy_batches(recal, cfg["bn_recal_batches"]), numpy_batches(val, cfg["eval_batches"])


def zero_flow_epe(val_batches):
    """EPE of predicting zero motion everywhere: the baseline a network must beat."""
    total = sum(float(np.sqrt(np.square(f.astype(np.float64)).sum(-1)).sum()) for _, f in val_batches)
    return total / sum(f.shape[0] * f.shape[1] * f.shape[2] for _, f in val_batches)


# ----------------------------------------------------------------------------- graph

def flow_metric_sums(pred, gt, valid=None):
    """Sums for EPE and px1/px3/px5 (fraction of pixels with EPE below 1/3/5 px) over the valid
    pixels of a batch: the one definition of the metrics.

    pred [..., B, H, W, 2] (any leading dims: one set of sums per leading index), gt [B, H, W, 2],
    valid [B, H, W] of 0/1 or None (every pixel valid). Fl-all counts valid pixels whose EPE is
    above 3 px and above 5% of the true flow's length (KITTI's outlier rate).
    """
    epe = tf.sqrt(tf.reduce_sum(tf.square(pred - gt), axis=-1))  # [..., B, H, W]
    mask = tf.ones_like(gt[..., 0]) if valid is None else tf.cast(valid, tf.float32)
    pixel_axes = [-3, -2, -1]

    def count(condition):
        return tf.reduce_sum(tf.cast(condition, tf.float32) * mask, axis=pixel_axes)

    gt_length = tf.sqrt(tf.reduce_sum(tf.square(gt), axis=-1))
    sums = {"epe": tf.reduce_sum(epe * mask, axis=pixel_axes), "pixels": tf.reduce_sum(mask) + tf.zeros_like(epe[..., 0, 0, 0]),
            "outliers": count(tf.logical_and(epe > 3.0, epe > 0.05 * gt_length))}
    for t in PX_THRESHOLDS:
        sums[f"px{t}"] = count(epe < t)
    return sums


def metrics_from_sums(totals):
    """Metrics from summed `flow_metric_sums` over batches: epe, px1/3/5 and fl_all (fractions)."""
    pixels = totals["pixels"]
    metrics = {"epe": totals["epe"] / pixels}
    metrics.update({f"px{t}": totals[f"px{t}"] / pixels for t in PX_THRESHOLDS})
    metrics["fl_all"] = totals["outliers"] / pixels
    return metrics


def build_scorer(images, flows, static_arch=None):
    """The graph pieces that score one subnet, sharing the supernet's variables.

    images [B, H, W, 6], flows [B, H, W, 2]: tensors the caller feeds. Returns a dict with the
    `arch` [9] and `recal_index` placeholders, the `recal` op (one training-mode pass that moves
    the chosen subnet's BN statistics) and the metric sums of the inference-mode pass.
    With `static_arch` (a standalone subnet) only that arch's layers are built and only it can be scored.
    """
    arch = tf.compat.v1.placeholder(tf.int32, [len(supernet.BLOCKS)], "score_arch")
    built = arch if static_arch is None else tuple(static_arch)
    recal_index = tf.compat.v1.placeholder(tf.int32, [], "recal_index")
    recal_flow = supernet.build_flows(images, built, mode="recal", recal_index=recal_index)[-1]
    pred = supernet.build_flows(images, built, mode="eval")[-1]
    return {"images": images, "flows": flows, "arch": arch, "recal_index": recal_index, "static_arch": static_arch,
            "recal": tf.group(recal_flow), "sums": flow_metric_sums(pred, flows)}


# ----------------------------------------------------------------------------- scoring

def score_subnet(sess, scorer, arch, recal_batches, val_batches):
    """Recalibrate one subnet's BN statistics, then its metrics over the validation batches.

    Recalibration overwrites every BN statistic the subnet uses (batch 0 sets them, batch k moves
    them by 1/(k+1)), so the result does not depend on which subnets were scored before.
    """
    static = scorer.get("static_arch")
    if static is not None and tuple(arch) != tuple(static):
        raise ValueError(f"this graph holds only subnet {supernet.format_arch(static)}; "
                         f"cannot score {supernet.format_arch(arch)}")
    for k, (images, _) in enumerate(recal_batches):
        sess.run(scorer["recal"], {scorer["images"]: images, scorer["arch"]: arch, scorer["recal_index"]: k})
    totals = {}
    for images, flows in val_batches:
        sums = sess.run(scorer["sums"], {scorer["images"]: images, scorer["flows"]: flows, scorer["arch"]: arch})
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return metrics_from_sums(totals)


def evaluate(sess, scorer, archs, recal_batches, val_batches, h, w, log=None):
    """Score every arch; returns {"archs": [rows], "mean_epe", "std_epe", "zero_flow_epe", "seconds"}.

    Each row: arch code, epe, px1, px3, px5, params, gmacs, seconds, rank (1 = lowest EPE).
    """
    if not recal_batches or not val_batches:
        raise ValueError("evaluation needs at least one recalibration batch and one validation batch")
    start = time.time()
    rows = []
    for i, arch in enumerate(archs):
        t0 = time.time()
        row = {"arch": supernet.format_arch(arch), **score_subnet(sess, scorer, arch, recal_batches, val_batches),
               "params": supernet.count_params(arch, h, w), "gmacs": supernet.count_macs(arch, h, w) / 1e9,
               "seconds": time.time() - t0}
        rows.append(row)
        if log:
            log(f"  [{i + 1}/{len(archs)}] {row['arch']}  EPE {row['epe']:.4f}  px1 {row['px1']:.3f}  "
                f"{row['gmacs']:.2f} GMAC  {row['seconds']:.1f}s")
    for rank, row in enumerate(sorted(rows, key=lambda r: r["epe"]), 1):
        row["rank"] = rank
    epes = np.array([r["epe"] for r in rows])
    return {"archs": rows, "mean_epe": float(epes.mean()), "std_epe": float(epes.std()),
            "zero_flow_epe": zero_flow_epe(val_batches), "seconds": time.time() - start}


# ----------------------------------------------------------------------------- CLI

def parse_args(argv):
    """Command-line flags; unset ones fall back to the run's saved config."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment_name", help="run under output_dir to score (default: the newest)")
    with open(DEFAULT_CONFIG) as f:
        output_dir = json.load(f)["output_dir"]
    parser.add_argument("--output_dir", default=output_dir, help="where runs live (default: config.json's)")
    parser.add_argument("--checkpoint_type", default="best", choices=ckpt.CHECKPOINT_KINDS)
    parser.add_argument("--batch_size", type=int, help="batch size for recalibration and scoring")
    parser.add_argument("--bn_recal_batches", type=int, help="training batches per BN recalibration")
    parser.add_argument("--eval_batches", type=int, help="validation batches per subnet (0 = all)")
    parser.add_argument("--arch", action="append", default=[], help="arch code to score (repeatable; default: the run's eval pool)")
    return parser.parse_args(argv)


def run(args):
    """Score the chosen checkpoint and write supernet_eval_result_<type>.json; returns the result."""
    run_dir = (os.path.join(args.output_dir, args.experiment_name) if args.experiment_name
               else ckpt.newest_run(args.output_dir, args.checkpoint_type))
    cfg = ckpt.read_json(os.path.join(run_dir, "config.json"), "run config")
    for key in ("batch_size", "bn_recal_batches", "eval_batches"):
        value = getattr(args, key)
        if value is not None:
            if value < (0 if key == "eval_batches" else 1):
                raise ValueError(f"--{key} {value} is out of range")
            cfg[key] = value
    archs = [supernet.parse_arch(code) for code in args.arch]
    standalone = supernet.parse_arch(cfg["arch"]) if cfg.get("arch") else None
    if standalone and any(a != standalone for a in archs):
        raise ValueError(f"{run_dir} is a standalone run of {cfg['arch']}: it scores only that arch")
    if standalone:
        archs = [standalone]
    elif not archs:
        pool_file = os.path.join(run_dir, f"eval_pool_{cfg['eval_pool_size']}.json")
        archs = [supernet.parse_arch(code) for code in ckpt.read_json(pool_file, "eval pool")["archs"]]
    h, w = cfg["input_h"], cfg["input_w"]
    data = data_fc2.open_data(cfg)
    print(data["reason"])
    recal_batches, val_batches = scoring_batches(cfg, data)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.INPUT_CHANNELS], "images")
        flows = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.FLOW_CHANNELS], "flows")
        scorer = build_scorer(images, flows, static_arch=standalone)
        saver = tf.compat.v1.train.Saver(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = ckpt.restore(sess, saver, run_dir, args.checkpoint_type, h, w)
        print(f"scoring {len(archs)} subnets of {meta['prefix']} (epoch {meta['epoch']}, step {meta['global_step']}): "
              f"{len(recal_batches)} recalibration batches, {sum(len(f) for _, f in val_batches)} validation samples")
        result = evaluate(sess, scorer, archs, recal_batches, val_batches, h, w, log=print)
    coverage = {"ok": None, "problems": []} if standalone else fair.pool_coverage(archs, h, w)
    summary = {"mode": "standalone" if standalone else "supernet",
               "run_dir": run_dir, "checkpoint": meta["prefix"], "checkpoint_type": args.checkpoint_type,
               "epoch": meta["epoch"], "global_step": meta["global_step"], "data_source": data["data_source"],
               "num_archs": len(archs), "mean_epe": result["mean_epe"], "std_epe": result["std_epe"],
               "zero_flow_epe": result["zero_flow_epe"], "batch_size": cfg["batch_size"],
               "bn_recal_batches": len(recal_batches), "val_samples": sum(len(f) for _, f in val_batches),
               "coverage_ok": coverage["ok"], "coverage_problems": coverage["problems"], "seconds": result["seconds"]}
    output = {"summary": summary, "archs": sorted(result["archs"], key=lambda r: r["rank"])}
    path = os.path.join(run_dir, f"supernet_eval_result_{args.checkpoint_type}.json")
    ckpt.write_json_atomic(path, output)
    print(f"mean EPE {summary['mean_epe']:.4f} (std {summary['std_epe']:.4f}) over {len(archs)} subnets; "
          f"zero-flow EPE {summary['zero_flow_epe']:.4f}; wrote {path}")
    return output


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad input."""
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, ckpt.CheckpointError, data_fc2.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
