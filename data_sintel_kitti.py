"""MPI-Sintel and KITTI 2015 training sets, read at full frame for evaluation: their layouts, every
sample padded at the bottom and right to a multiple of 4 (images by edge replication, flow and
validity with 0, so padded pixels count for no metric), and batches of one padded size read on
demand (a whole split does not fit in memory as float arrays)."""
import collections.abc
import concurrent.futures
import os
import re

import numpy as np

import fc2_pipeline
import flowio
from errors import DataError


EVAL_DATASETS = ("fc2", "sintel", "kitti")
SINTEL_PASSES = ("clean", "final")
SINTEL_FLOW_DIR = "flow"
KITTI_IMAGE_DIR = "image_2"
KITTI_FLOW_DIR = "flow_occ"
PAD_MULTIPLE = 4  # the network's input sides must be multiples of 4
_SINTEL_FRAME = re.compile(r"^frame_(\d+)\.png$")
_KITTI_FRAME = re.compile(r"^(\d+)_10\.png$")


def _list_folder(folder, what):
    try:
        return sorted(os.listdir(folder))
    except OSError as e:
        raise DataError(f"{folder}: cannot list {what} ({e.strerror})") from None


def _sintel_scene_pairs(image_dir, flow_dir):
    """(img0, img1, flow) of every pair of consecutive frames of one scene; each needs its flow
    file, and each flow file needs both its frames."""
    frames = {int(m.group(1)): m.group(0)
              for m in map(_SINTEL_FRAME.match, _list_folder(image_dir, "Sintel scene")) if m}
    samples = []
    for number in sorted(frames):
        if number + 1 in frames:
            flow = os.path.join(flow_dir, frames[number][:-len(".png")] + ".flo")
            if not os.path.isfile(flow):
                raise DataError(f"{flow}: flow file missing for frames {frames[number]} -> {frames[number + 1]} "
                                f"of {image_dir}")
            first, second = (os.path.join(image_dir, frames[n]) for n in (number, number + 1))
            samples.append((first, second, flow))
    paired = {os.path.basename(s[2]) for s in samples}
    for name in _list_folder(flow_dir, "Sintel flow folder"):
        if name.endswith(".flo") and name not in paired:
            raise DataError(f"{os.path.join(flow_dir, name)}: flow file without both of its frames in {image_dir}")
    return samples


def list_sintel_samples(base_path, sintel_pass):
    """(img0, img1, flow) path tuples of MPI-Sintel's training split, scene by scene in name order.

    Layout: training/<pass>/<scene>/frame_NNNN.png and training/flow/<scene>/frame_NNNN.flo (the
    flow from frame N to frame N+1). Raises DataError naming the file or folder for a missing
    folder, a frame pair without its flow file, a flow file without its frames, or no pairs at all.
    """
    if sintel_pass not in SINTEL_PASSES:
        raise DataError(f"Sintel pass {sintel_pass!r} is not one of {', '.join(SINTEL_PASSES)}")
    pass_dir = os.path.join(base_path, "training", sintel_pass)
    samples = []
    for scene in _list_folder(pass_dir, f"Sintel {sintel_pass} pass folder"):
        if os.path.isdir(os.path.join(pass_dir, scene)):
            samples += _sintel_scene_pairs(os.path.join(pass_dir, scene),
                                           os.path.join(base_path, "training", SINTEL_FLOW_DIR, scene))
    if not samples:
        raise DataError(f"{pass_dir}: no Sintel frame pairs (expected <scene>/frame_NNNN.png)")
    return samples


def list_kitti_samples(base_path):
    """(img0, img1, flow) path tuples of KITTI 2015's flow training split, in id order.

    Layout: training/image_2/NNNNNN_10.png and NNNNNN_11.png, training/flow_occ/NNNNNN_10.png.
    Raises DataError naming the file or folder for a missing folder or file, or no samples at all.
    """
    image_dir = os.path.join(base_path, "training", KITTI_IMAGE_DIR)
    flow_dir = os.path.join(base_path, "training", KITTI_FLOW_DIR)
    samples = []
    for m in filter(None, map(_KITTI_FRAME.match, _list_folder(image_dir, "KITTI image folder"))):
        sample = (os.path.join(image_dir, m.group(0)), os.path.join(image_dir, f"{m.group(1)}_11.png"),
                  os.path.join(flow_dir, m.group(0)))
        for path in sample[1:]:
            if not os.path.isfile(path):
                raise DataError(f"{path}: missing (the KITTI sample of {sample[0]})")
        samples.append(sample)
    if not samples:
        raise DataError(f"{image_dir}: no KITTI samples (expected NNNNNN_10.png and NNNNNN_11.png)")
    return samples


def padded_size(height, width, multiple=PAD_MULTIPLE):
    """(height, width) rounded up to multiples of `multiple`."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def pad_sample(img0, img1, flow, valid, multiple=PAD_MULTIPLE):
    """One network input from a full-frame sample: (images float32 [h, w, 6] in [-1, 1], flow
    [h, w, 2], valid [h, w]) padded at the bottom and right to multiples of `multiple`; images by
    edge replication, flow and valid with 0, so the padded pixels count for no metric."""
    height, width = flow.shape[:2]
    target = padded_size(height, width, multiple)
    pad = ((0, target[0] - height), (0, target[1] - width))
    images = np.pad(fc2_pipeline.normalise(np.concatenate([img0, img1], axis=-1)), pad + ((0, 0),), mode="edge")
    return images, np.pad(flow, pad + ((0, 0),)), np.pad(valid, pad)


class EvalBatches(collections.abc.Sequence):
    """Full-frame validation batches (images [B, h, w, 6], flows [B, h, w, 2], valid [B, h, w])
    of samples on disk, read when indexed, every batch of one padded size.

    Samples are grouped by padded size (KITTI's frames differ in size), in their order within a
    group, then cut into batches of `batch_size`; `limit` > 0 keeps the first `limit` batches.
    Every sample's headers are checked first (check_eval_sample), so a broken file stops the run
    before any scoring. `samples`, `frame_sizes` and `batch_sizes` describe the batches in that
    order. Reading runs in
    a worker thread (eager TensorFlow decoding works there even inside a Session's graph context)
    and reads the next batch (after the last: the first) while the current one is used.
    """

    def __init__(self, samples, batch_size, limit=0):
        sizes = [flowio.check_eval_sample(s) for s in samples]
        groups = {}
        for sample, size in zip(samples, sizes):
            groups.setdefault(padded_size(*size), []).append((sample, size))
        chunks = [members[i:i + batch_size] for members in groups.values()
                  for i in range(0, len(members), batch_size)]
        self.batches = [[s for s, _ in chunk] for chunk in chunks[:limit or None]]
        self.samples = [s for batch in self.batches for s in batch]
        self.frame_sizes = [size for chunk in chunks[:limit or None] for _, size in chunk]
        self.batch_sizes = [padded_size(*chunk[0][1]) for chunk in chunks[:limit or None]]
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eval_batches")
        self._pending = {}

    def __len__(self):
        return len(self.batches)

    def _read(self, index):
        padded = [pad_sample(*flowio.load_eval_sample(s)) for s in self.batches[index]]
        return tuple(np.stack(parts) for parts in zip(*padded))

    def __getitem__(self, index):
        if not isinstance(index, int):
            raise TypeError("EvalBatches takes integer indices")
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        future = self._pending.pop(index, None) or self._executor.submit(self._read, index)
        following = (index + 1) % len(self)  # every scored subnet runs through the batches in order
        self._pending = {following: self._pending.get(following) or self._executor.submit(self._read, following)}
        return future.result()
