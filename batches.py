"""The batches every subnet is scored on: BN recalibration batches (the run's own training data,
random crops at its input size, as training sees them) and validation batches (the run's FC2
split centre-cropped, or Sintel or KITTI at full frame), read once as numpy so that every subnet
of every evaluation sees the same pixels."""
import os

import numpy as np
from tensorflow_quiet import tf

import data_fc2
import data_sintel_kitti
import fc2_pipeline
from errors import DataError, one_line


def numpy_batches(dataset, limit, samples, crop_hw):
    """The first `limit` batches of an eager tf.data dataset as numpy (images, flows); 0 = all. If
    reading fails, the error names the first of `samples` (the files read) at fault."""
    try:
        return [(images.numpy(), flows.numpy()) for images, flows in dataset.take(limit or -1)]
    except tf.errors.OpError as err:
        raise data_fc2.find_fault(samples, crop_hw) or DataError(one_line(err)) from None


def recalibration_batches(cfg, data, count=None):
    """The first `count` (default `bn_recal_batches`) seeded training batches of the run's data
    (random crops at the run's input size, as training sees them): what every BN recalibration
    uses, whatever is scored."""
    count = count or cfg["bn_recal_batches"]
    recal = fc2_pipeline.make_dataset(data["train"], cfg["batch_size"], (cfg["input_h"], cfg["input_w"]), train=True,
                                      max_flow=cfg["max_flow"], seed=cfg["seed"])
    samples = fc2_pipeline.training_batch_samples(data["train"], cfg["seed"], range(count), cfg["batch_size"])
    return numpy_batches(recal, count, samples, (cfg["input_h"], cfg["input_w"]))


def resize_images(images, size):
    """Frames [B, H, W, 6] resized to `size` (h, w) as a camera at that resolution would see them:
    bilinear with antialiasing (an area filter when shrinking); unchanged at their own size."""
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    return tf.image.resize(images, size, method="bilinear", antialias=True).numpy()


def at_size(val_batches, size):
    """Validation batches with their frames resized to `size` and their true flow and validity kept
    at the frame's size: a prediction at `size` is scored at the frame's (metrics.to_frame)."""
    return [(resize_images(images, size), flows, valid) for images, flows, valid in map(batch_parts, val_batches)]


def deployment_base(cfg, calibration_samples):
    """The batches of the run configured by `cfg` that deploying at any size starts from, read
    once at the run's input size: {"recal": its BN recalibration batches, "val": its validation
    batches, "calibration": the first `calibration_samples` training crops of its seeded stream
    (real frames, never zeros or noise), "data_source"}."""
    data = data_fc2.open_data(cfg)  # announces synthetic data itself
    count = -(-calibration_samples // cfg["batch_size"])
    training = recalibration_batches(cfg, data, max(count, cfg["bn_recal_batches"]))
    return {"recal": training[:cfg["bn_recal_batches"]], "val": centre_crop_batches(cfg, data),
            "calibration": np.concatenate([images for images, _ in training])[:calibration_samples],
            "data_source": data["data_source"]}


def deployment_batches(base, size, recal_at_size):
    """What deploying at `size` (h, w) is scored and converted with (from deployment_base):
    {"recal": the recalibration batches (resized to `size` if recal_at_size), "val": the
    validation batches with their frames resized to `size` (at_size), "calibration": the
    calibration crops resized to `size`, "data_source"}."""
    recal = base["recal"]
    return {"recal": [(resize_images(images, size), None) for images, _ in recal] if recal_at_size else recal,
            "val": at_size(base["val"], size), "calibration": [(resize_images(base["calibration"], size), None)],
            "data_source": base["data_source"]}


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
    val = fc2_pipeline.make_dataset(data["val"], cfg["batch_size"], crop, train=False, max_flow=cfg["max_flow"],
                                    seed=cfg["seed"])
    return numpy_batches(val, cfg["eval_batches"], data["val"] if isinstance(data["val"], list) else [], crop)


def add_dataset_flags(parser):
    """Add the flags that choose the scored dataset to an argparse parser: --dataset, --base_path,
    --sintel_pass (dataset_batches and result_suffix take their values)."""
    group = parser.add_argument_group("scored dataset (BN recalibration always uses the run's own training data)")
    group.add_argument("--dataset", default="fc2", choices=data_sintel_kitti.EVAL_DATASETS,
                       help="fc2: centre crops at the run's input size; sintel, kitti: full frames (default fc2)")
    group.add_argument("--base_path", help="root of the scored dataset, holding training/ for sintel and kitti "
                                           "(fc2: default the run's own data)")
    group.add_argument("--sintel_pass", default="final", choices=data_sintel_kitti.SINTEL_PASSES, help="default final")


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


def _full_frame_validation(cfg, dataset, base_path, sintel_pass):
    """EvalBatches of Sintel or KITTI, and their sample names (Sintel: scene/frame_NNNN)."""
    if dataset == "sintel":
        samples = data_sintel_kitti.list_sintel_samples(base_path, sintel_pass)
    else:
        samples = data_sintel_kitti.list_kitti_samples(base_path)
    val = data_sintel_kitti.EvalBatches(samples, cfg["batch_size"], cfg["eval_batches"])
    names = [os.path.splitext(os.path.relpath(s[0], os.path.dirname(os.path.dirname(s[0]))))[0]
             if dataset == "sintel" else os.path.splitext(os.path.basename(s[0]))[0] for s in val.samples]
    return val, names


def dataset_batches(cfg, *, dataset, base_path, sintel_pass):
    """(recal_batches, val_batches, info) to score the run configured by `cfg` on the dataset that
    add_dataset_flags' flags (`dataset`, `base_path` or None, `sintel_pass`) choose.

    recal_batches: (images, flows) training batches of the run's own data at its input size.
    val_batches: a sequence of (images [B, H, W, 6], flows [B, H, W, 2], valid float32 [B, H, W]);
    one size within a batch, sizes may differ between batches (KITTI). info: dataset, pass,
    base_path, data_source, recal_data_source, recal_input_size, input_sizes (padded, what the
    graph runs at), frame_sizes, samples, sample_names and sample_frame_sizes (in batch order),
    suffix (for result names: "" for the run's own FC2 data, "_fc2", "_sintel_final", "_kitti"), reason.
    """
    suffix = result_suffix(dataset=dataset, base_path=base_path, sintel_pass=sintel_pass)
    if dataset != "fc2" and not base_path:
        raise DataError(f"--dataset {dataset} needs --base_path (the folder that holds training/)")
    if dataset == "fc2":
        run_data = data_fc2.open_data(cfg)
        scored = (data_fc2.open_data(dict(cfg, base_path=base_path, synthetic=False)) if base_path
                  else run_data)
        val, names = _fc2_validation(cfg, scored)
        frame_sizes, data_source = [(cfg["input_h"], cfg["input_w"])] * len(names), scored["data_source"]
        reason = scored["reason"] + f", validation centre-cropped to {cfg['input_h']}x{cfg['input_w']}"
    else:
        val, names = _full_frame_validation(cfg, dataset, base_path, sintel_pass)
        frame_sizes, data_source = val.frame_sizes, dataset
        reason = (f"{dataset} from {base_path}, full frames padded to multiples of "
                  f"{data_sintel_kitti.PAD_MULTIPLE}")
        run_data = data_fc2.open_data(cfg)
    recal = recalibration_batches(cfg, run_data)
    scored_pass = sintel_pass if dataset == "sintel" else None
    input_sizes = val.batch_sizes if isinstance(val, data_sintel_kitti.EvalBatches) else [b[0].shape[1:3] for b in val]
    info = {"dataset": dataset, "pass": scored_pass, "base_path": base_path or cfg["base_path"],
            "data_source": data_source, "recal_data_source": run_data["data_source"],
            "recal_input_size": [cfg["input_h"], cfg["input_w"]], "input_sizes": _distinct_sizes(input_sizes),
            "frame_sizes": _distinct_sizes(frame_sizes), "samples": len(names), "sample_names": names,
            "sample_frame_sizes": [[int(v) for v in size] for size in frame_sizes], "suffix": suffix,
            "reason": f"scoring {reason}; BN recalibration on the run's data ({run_data['reason']})"}
    return recal, val, info


def result_suffix(*, dataset, base_path, sintel_pass):
    """What result names add for the dataset that add_dataset_flags' flags choose: "" for the run's
    own FC2 data, "_fc2" for another FC2 tree, "_sintel_<pass>", "_kitti". Reads no data."""
    if dataset not in data_sintel_kitti.EVAL_DATASETS:
        raise DataError(f"--dataset {dataset!r} is not one of {', '.join(data_sintel_kitti.EVAL_DATASETS)}")
    if dataset == "fc2" and not base_path:
        return ""
    return "_" + "_".join(filter(None, [dataset, sintel_pass if dataset == "sintel" else None]))


def _distinct_sizes(sizes):
    return [list(size) for size in sorted({(int(h), int(w)) for h, w in sizes})]
