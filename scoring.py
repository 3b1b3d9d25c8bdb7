"""Scoring subnets of a trained supernet (or a standalone run): BN recalibration of one subnet,
then its metrics on the validation batches. `evaluate(...)` scores a list of archs and is what
training calls at every evaluation; `restored_scorer` opens a run's checkpoint ready to score."""
import time

import numpy as np
from tensorflow_quiet import tf

import batches
import ckpt
import metrics
import supernet
from errors import ArchError, DataError


def _eval_pass(images, flows, arch):
    """Inference-mode prediction at the static size of `images` and its metric sums at the size of
    `flows` (the frame: metrics.to_frame brings a prediction at another size to it); the validity
    mask defaults to all ones."""
    h, w = int(images.shape[1]), int(images.shape[2])
    frame = tuple(int(v) for v in flows.shape[1:3])
    valid = tf.compat.v1.placeholder_with_default(tf.ones_like(flows[..., 0]), [None, *frame], f"valid_{h}x{w}")
    pred = metrics.to_frame(supernet.build_flows(images, arch, mode="eval")[-1], frame)
    return {"images": images, "flows": flows, "valid": valid, "pred": pred,
            "sums": metrics.flow_metric_sums(pred, flows, valid)}


def build_scorer(images, flows, eval_sizes=(), static_arch=None, frame_size=None):
    """The graph pieces that score one subnet, sharing the supernet's variables.

    images [B, H, W, 6], flows [B, H, W, 2]: tensors the caller feeds, at the size BN
    recalibration runs at (the run's input size). eval_sizes: further (h, w) sizes to score at
    (full frames), each with its own placeholders. Returns a dict with the `arch` [9] and
    `recal_index` placeholders, the `recal` op (one training-mode pass that moves the chosen
    subnet's BN statistics) and `eval`: {(h, w): images, flows, valid, pred, sums} of the
    inference-mode pass at each size; the top-level images/flows/valid/pred/sums are those at
    the recalibration size. With `static_arch` (a standalone subnet) only that arch's layers are
    built and only it can be scored. With `frame_size` (h, w), the passes at `eval_sizes` score
    against flows of that size (frames resized to the input size: see metrics.to_frame).
    """
    arch = tf.compat.v1.placeholder(tf.int32, [len(supernet.SPACE.blocks)], "score_arch")
    built = arch if static_arch is None else tuple(static_arch)
    recal_index = tf.compat.v1.placeholder(tf.int32, [], "recal_index")
    recal_flow = supernet.build_flows(images, built, mode="recal", recal_index=recal_index)[-1]
    base = _eval_pass(images, flows, built)
    passes = {tuple(int(v) for v in images.shape[1:3]): base}
    for h, w in eval_sizes:
        if (h, w) not in passes:
            passes[(h, w)] = _eval_pass(
                tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.INPUT_CHANNELS], f"images_{h}x{w}"),
                tf.compat.v1.placeholder(tf.float32, [None, *(frame_size or (h, w)), supernet.FLOW_CHANNELS],
                                         f"flows_{h}x{w}"), built)
    return dict(base, arch=arch, recal_index=recal_index, recal=tf.group(recal_flow), eval=passes,
                static_arch=static_arch)


def recalibrate(sess, scorer, arch, recal_batches):
    """Set the BN statistics of subnet `arch` to the exact average of its batch statistics over
    the recalibration batches (batch 0 sets them, batch k moves them by 1/(k+1)): every statistic
    the subnet uses is overwritten, so nothing depends on which subnets came before."""
    static = scorer.get("static_arch")
    if static is not None and tuple(arch) != tuple(static):
        raise ArchError(f"this graph holds only subnet {supernet.format_arch(static)}; "
                        f"cannot score {supernet.format_arch(arch)}")
    for k, batch in enumerate(recal_batches):
        sess.run(scorer["recal"], {scorer["images"]: batch[0], scorer["arch"]: arch, scorer["recal_index"]: k})


def score_subnet(sess, scorer, arch, recal_batches, val_batches, on_prediction=None):
    """Recalibrate one subnet's BN statistics, then its metrics over the validation batches
    ((images, flows) pairs or (images, flows, valid) triples; each batch's size must be one the
    scorer was built for): metrics.NAMES, and `sample_epe`, each sample's EPE sum (numpy).
    on_prediction(batch_index, batch, pred) is called with every batch's predicted flow if given.
    Recalibration (see recalibrate) makes the result independent of what was scored before.
    """
    recalibrate(sess, scorer, arch, recal_batches)
    totals = {}
    for index, batch in enumerate(val_batches):
        images, flows, valid = batches.batch_parts(batch)
        size = tuple(images.shape[1:3])
        if size not in scorer["eval"]:
            raise DataError(f"validation batch {index} is {size[0]}x{size[1]}: the scorer was built for "
                            f"{', '.join(f'{h}x{w}' for h, w in scorer['eval'])}")
        part = scorer["eval"][size]
        fetches = {"sums": part["sums"], "pred": part["pred"]} if on_prediction else {"sums": part["sums"]}
        out = sess.run(fetches, {part["images"]: images, part["flows"]: flows, part["valid"]: valid,
                                 scorer["arch"]: arch})
        if on_prediction:
            on_prediction(index, (images, flows, valid), out["pred"])
        metrics.add_sums(totals, out["sums"])
    return dict(metrics.metrics_from_sums(totals), sample_epe=totals["sample_epe"])


def evaluate(sess, scorer, archs, recal_batches, val_batches, h, w, log=None, on_prediction=None):
    """Score every arch; returns {"archs": [rows], "mean_epe", "std_epe", "zero_flow_epe", "seconds",
    "first_predictions": {arch code: predicted flow of the first validation sample}}.

    Each row: arch code, epe, px1, px3, px5, fl_all, params, gmacs (at h x w), seconds, rank
    (1 = lowest EPE), epe_se_vs_best (the paired standard error over the validation samples of its
    EPE minus the best row's: metrics.paired_se). on_prediction(arch, batch_index, batch, pred)
    sees every predicted batch.
    """
    if not recal_batches or not len(val_batches):
        raise DataError("evaluation needs at least one recalibration batch and one validation batch")
    start = time.time()
    rows, first, zero_flow, pixels, samples = [], {}, [], [], {}
    for i, arch in enumerate(archs):
        t0 = time.time()
        code = supernet.format_arch(arch)

        def keep(index, batch, pred, arch=arch, code=code, i=i):
            if index == 0:
                first[code] = pred[0]
            if i == 0:  # the baseline from the batches as the first subnet sees them: no second read
                zero_flow.append(metrics.zero_flow_sums(*batch[1:]))
                pixels.append(batch[2].reshape(len(batch[2]), -1).sum(1))
            if on_prediction:
                on_prediction(arch, index, batch, pred)

        scored = score_subnet(sess, scorer, arch, recal_batches, val_batches, keep)
        samples[code] = scored.pop("sample_epe")
        row = {"arch": code, **scored, "params": supernet.count_params(arch, h, w),
               "gmacs": supernet.count_macs(arch, h, w) / 1e9, "seconds": time.time() - t0}
        rows.append(row)
        if log:
            log(f"  [{i + 1}/{len(archs)}] {row['arch']}  EPE {row['epe']:.4f}  px1 {row['px1']:.3f}  "
                f"Fl-all {row['fl_all']:.3f}  {row['gmacs']:.2f} GMAC  {row['seconds']:.1f}s")
    best = min(rows, key=lambda r: r["epe"])["arch"]
    for rank, row in enumerate(sorted(rows, key=lambda r: r["epe"]), 1):
        row.update(rank=rank, epe_se_vs_best=metrics.paired_se(samples[row["arch"]], samples[best],
                                                                np.concatenate(pixels)))
    epes = np.array([r["epe"] for r in rows])
    return {"archs": rows, "mean_epe": float(epes.mean()), "std_epe": float(epes.std()),
            "zero_flow_epe": sum(z[0] for z in zero_flow) / sum(z[1] for z in zero_flow),
            "seconds": time.time() - start, "first_predictions": first}


def restored_scorer(run_dir, kind, h, w, eval_sizes=(), static_arch=None, input_size=None, frame_size=None):
    """A context manager: a scorer (build_scorer at h x w, plus `eval_sizes`) holding checkpoint
    `kind` of the run, in a session with the project's session config; yields (sess, scorer, meta).
    The scorer also carries `variables` {name: variable}. `input_size`, if given, must be the
    checkpoint's (see ckpt.restored_session)."""
    def build():
        images = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.INPUT_CHANNELS], "images")
        flows = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.FLOW_CHANNELS], "flows")
        scorer = build_scorer(images, flows, eval_sizes, static_arch, frame_size)
        return dict(scorer, variables={v.op.name: v for v in tf.compat.v1.global_variables()})
    return ckpt.restored_session(run_dir, kind, build, input_size)
