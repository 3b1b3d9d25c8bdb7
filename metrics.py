"""The one definition of the flow metrics: EPE, px1/px3/px5 and Fl-all of a predicted flow against
the true flow over the valid pixels, as TensorFlow ops (summed per batch, so batches and subnets
add up), each sample's EPE sum (for the paired standard error of a difference between subnets),
the zero-flow baseline, and a flow predicted at another input size brought to the frame's."""
import numpy as np
from tensorflow_quiet import tf

import batches

PX_THRESHOLDS = (1, 3, 5)
NAMES = ("epe",) + tuple(f"px{t}" for t in PX_THRESHOLDS) + ("fl_all",)  # what metrics_from_sums gives


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
        counted = epe
    else:
        mask = tf.cast(valid, tf.bool)
        pixels = tf.reduce_sum(tf.cast(mask, tf.float32))
        counted = tf.where(mask, epe, np.inf)  # an invalid pixel is below no threshold ...
        outlier_above = tf.where(mask, outlier_above, np.inf)  # ... and above no outlier threshold
    sample_epe = tf.reduce_sum(epe if valid is None else tf.where(mask, epe, 0.0), axis=[-2, -1])  # [..., B]
    epe_sum = tf.reduce_sum(sample_epe, axis=-1)  # one pass over the pixels serves both

    def count(condition):
        return tf.reduce_sum(tf.cast(condition, tf.float32), axis=axes)

    sums = {"epe": epe_sum, "pixels": pixels + tf.zeros_like(epe_sum), "outliers": count(counted > outlier_above)}
    for t in PX_THRESHOLDS:
        sums[f"px{t}"] = count(counted < t)
    sums["sample_epe"] = sample_epe
    return sums


def add_sums(totals, sums):
    """Add one batch's fetched flow_metric_sums to `totals` (float64): scalars (or arrays over
    leading dims) add up, each sample's EPE sum is appended along the last axis."""
    for key, value in sums.items():
        value = np.asarray(value, np.float64)
        if key == "sample_epe":
            totals[key] = np.concatenate([totals[key], value], -1) if key in totals else value
        else:
            totals[key] = totals.get(key, 0.0) + value
    return totals


def sample_pixels(val_batches):
    """The valid pixels of every validation sample, in batch order (what each sample's EPE sum is over)."""
    return np.concatenate([batches.batch_parts(b)[2].reshape(len(b[0]), -1).sum(1) for b in val_batches])


def paired_se(sample_epe_a, sample_epe_b, pixels):
    """Standard error of EPE(a) - EPE(b) over the validation samples both were scored on (paired:
    each sample's own difficulty cancels). EPE is a ratio of sums over samples, so this is the
    delta-method SE of the ratio: sqrt(n / (n - 1) * sum((d_i - D p_i)^2)) / sum(p_i), with d_i
    the difference of sample i's EPE sums, p_i its pixels and D the EPE difference. With equal
    pixels per sample it is std(per-sample EPE differences, ddof=1) / sqrt(n). None for n < 2."""
    d = np.asarray(sample_epe_a, np.float64) - np.asarray(sample_epe_b, np.float64)
    p = np.asarray(pixels, np.float64)
    if len(d) < 2:
        return None
    difference = d.sum() / p.sum()
    return float(np.sqrt(len(d) / (len(d) - 1) * np.square(d - difference * p).sum()) / p.sum())


def to_frame(pred, frame_hw):
    """Flow predicted at an input size other than the frame's, as flow of the frame: the field
    resized bilinearly to frame_hw and each component scaled by the frame's size over the input's
    (flow is in input-pixel units). pred [..., B, h, w, 2] -> [..., B, H, W, 2]; unchanged when
    the sizes agree."""
    h, w = (int(v) for v in pred.shape[-3:-1])
    if (h, w) == tuple(frame_hw):
        return pred
    frame_h, frame_w = frame_hw
    flat = tf.reshape(pred, [-1, h, w, 2]) * [frame_w / w, frame_h / h]  # scaled first: the resize is linear
    resized = tf.image.resize(flat, (frame_h, frame_w), method="bilinear")
    return tf.reshape(resized, tf.concat([tf.shape(pred)[:-3], [frame_h, frame_w, 2]], 0))


def metrics_from_sums(totals):
    """Metrics from summed `flow_metric_sums` over batches: epe, px1/3/5 and fl_all (fractions)."""
    pixels = totals["pixels"]
    metrics = {"epe": totals["epe"] / pixels}
    metrics.update({f"px{t}": totals[f"px{t}"] / pixels for t in PX_THRESHOLDS})
    metrics["fl_all"] = totals["outliers"] / pixels
    return metrics


def zero_flow_sums(flows, valid):
    """(summed true flow length, pixel count) over the valid pixels of one batch."""
    return float((np.sqrt(np.square(flows.astype(np.float64)).sum(-1)) * valid).sum()), float(valid.sum())


def zero_flow_epe(val_batches):
    """EPE of predicting zero motion at every valid pixel: the baseline a network must beat."""
    sums = [zero_flow_sums(*batches.batch_parts(batch)[1:]) for batch in val_batches]
    return sum(s[0] for s in sums) / sum(s[1] for s in sums)
