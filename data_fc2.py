"""FlyingChairs2 (FC2) data: its list-file and folder layouts, the up-front check of every sample,
the `tf.data` pipeline that feeds training and the scoring batches, and the synthetic fallback
(synthetic.py renders the pairs). Every data problem raises DataError with a one-line message that
names the file or field. Synthetic data is used only when asked for or when no dataset is
configured at all (`open_data`); a configured but broken dataset is an error, never a substitute.

    python data_fc2.py --make_synthetic_fc2 DIR --num N [--seed S] [--h H --w W]
    python data_fc2.py --check --base_path DIR
"""
import functools
import logging
import os
import re
import sys

import numpy as np
from tensorflow_quiet import tf

import flowio
import synthetic
from errors import ArgumentParser, DataError

SPLITS = ("train", "val")
DIRNAMES_FILE = "FC2_dirnames.txt"
SPLIT_LIST_FILES = {"train": "FC2_train.txt", "val": "FC2_test.txt"}
FOLDER_ROOT = "FlyingChairs2"
_SUFFIX = {"img0": "-img_0.png", "img1": "-img_1.png", "flow": "-flow_01.flo"}
_SAMPLE_FILE = re.compile(r"^(\d+)(-img_0\.png|-img_1\.png|-flow_01\.flo)$")
_MAX_NAMED_MISSING = 3

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------- FC2 samples: lists, folders

def _check_split(split):
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")


def _read_text_lines(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror})") from None


def _sample_from_img0(img0):
    """(img0, img1, flow) paths of the FC2 sample whose img_0 path is given."""
    stem = img0[: -len(_SUFFIX["img0"])]
    return img0, stem + _SUFFIX["img1"], stem + _SUFFIX["flow"]


def _read_dirnames(base_path):
    """img_0 paths listed in FC2_dirnames.txt, made absolute against base_path where relative."""
    path = os.path.join(base_path, DIRNAMES_FILE)
    lines = _read_text_lines(path, "list file")
    while lines and not lines[-1].strip():
        lines.pop()
    img0_paths = []
    for lineno, line in enumerate(lines, 1):
        entry = line.strip()
        # line numbers are the sample indices, so a blank line would silently shift them all
        if not entry.endswith(_SUFFIX["img0"]):
            raise DataError(f"{path}:{lineno}: expected an img_0 path ending in "
                            f"'{_SUFFIX['img0']}', got {entry!r}")
        img0_paths.append(os.path.normpath(os.path.join(base_path, entry)))
    return img0_paths


def _read_split_indices(base_path, split, n_lines):
    """0-based indices from the split's list file, each checked against FC2_dirnames.txt."""
    path = os.path.join(base_path, SPLIT_LIST_FILES[split])
    indices, seen = [], set()
    for lineno, line in enumerate(_read_text_lines(path, "split list file"), 1):
        if not line.strip():
            continue
        try:
            index = int(line)
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected an integer index, "
                            f"got {line.strip()!r}") from None
        if not 0 <= index < n_lines:
            raise DataError(f"{path}:{lineno}: index {index} out of range: {DIRNAMES_FILE} has "
                            f"{n_lines} lines (valid 0..{n_lines - 1})")
        if index in seen:
            raise DataError(f"{path}:{lineno}: index {index} listed twice")
        seen.add(index)
        indices.append(index)
    return indices


def _scan_split_folder(base_path, split):
    """Samples in FlyingChairs2/<split>/, one per id seen in any of its three file names."""
    folder = os.path.join(base_path, FOLDER_ROOT, split)
    try:
        names = os.listdir(folder)
    except OSError as e:
        raise DataError(f"{folder}: cannot list split folder ({e.strerror})") from None
    # ids come from all three names, so a sample missing its img_0 still shows up as incomplete
    ids = {m.group(1) for m in map(_SAMPLE_FILE.match, names) if m}
    return [_sample_from_img0(os.path.normpath(os.path.join(folder, sid + _SUFFIX["img0"])))
            for sid in sorted(ids, key=lambda s: (int(s), s))]


def detect_layout(base_path):
    """'lists' if base_path holds FC2_dirnames.txt, else 'folders' if it holds FlyingChairs2/ and
    no split list (a split list without FC2_dirnames.txt is a broken lists layout, not folders)."""
    return _detect_layout(base_path)[0]


def _detect_layout(base_path):
    """(layout, why it was chosen) for the auto layout; DataError if base_path has neither."""
    if not os.path.isdir(base_path):
        raise DataError(f"base_path {base_path!r} is not a directory")
    if os.path.isfile(os.path.join(base_path, DIRNAMES_FILE)):
        return "lists", f"{DIRNAMES_FILE} found"
    lists = [name for name in SPLIT_LIST_FILES.values() if os.path.exists(os.path.join(base_path, name))]
    if lists:
        raise DataError(f"{os.path.join(base_path, DIRNAMES_FILE)}: missing, but {lists[0]} is there: the lists "
                        f"layout is incomplete (give data_layout folders to read {FOLDER_ROOT}/ instead)")
    if os.path.isdir(os.path.join(base_path, FOLDER_ROOT)):
        return "folders", f"no {DIRNAMES_FILE}, {FOLDER_ROOT}/ found"
    raise DataError(f"base_path {base_path!r} holds neither {DIRNAMES_FILE} nor {FOLDER_ROOT}/")


def _resolve_layout(base_path, layout):
    if layout == "auto":
        return detect_layout(base_path)
    if layout not in ("lists", "folders"):
        raise DataError(f"data_layout {layout!r} is not one of auto, lists, folders")
    return layout


def list_samples(base_path, split, layout):
    """(img0, img1, flow) path tuples of one split; layout 'lists', 'folders' or 'auto'.

    Lists: FC2_dirnames.txt (img_0 paths relative to base_path, or absolute) indexed by
    FC2_train.txt ('train') or FC2_test.txt ('val'). Folders: FlyingChairs2/<split>/.
    Existence of the files is not checked here (see check_dataset).
    """
    _check_split(split)
    layout = _resolve_layout(base_path, layout)
    if layout == "folders":
        return _scan_split_folder(base_path, split)
    img0_paths = _read_dirnames(base_path)
    indices = _read_split_indices(base_path, split, len(img0_paths))
    return [_sample_from_img0(img0_paths[i]) for i in indices]


def _split_source_name(base_path, split, layout):
    if layout == "lists":
        return os.path.join(base_path, SPLIT_LIST_FILES[split])
    return os.path.join(base_path, FOLDER_ROOT, split)


def check_dataset(base_path, layout, crop_hw=(1, 1)):
    """Count complete samples per split: {"train": n, "val": n}.

    Raises DataError if a split is empty or any sample misses img_0, img_1 or flow_01 (with the
    count of incomplete samples and the first few missing paths), if a sample is in both splits,
    or naming the first file whose header is wrong (check_sample_files: a few dozen bytes of each
    file, so seconds for FC2) or whose sample is smaller than `crop_hw`.
    """
    if not os.path.isdir(base_path):
        raise DataError(f"base_path {base_path!r} is not a directory")
    layout = _resolve_layout(base_path, layout)
    by_split = {}
    for split in SPLITS:
        samples = list_samples(base_path, split, layout)
        if not samples:
            raise DataError(f"split '{split}' under {base_path} has no samples "
                            f"({_split_source_name(base_path, split, layout)})")
        missing = [[p for p in sample if not os.path.isfile(p)] for sample in samples]
        incomplete = sum(1 for m in missing if m)
        if incomplete:
            first = [p for m in missing for p in m][:_MAX_NAMED_MISSING]
            raise DataError(f"{incomplete} of {len(samples)} samples in split '{split}' are "
                            f"incomplete under {base_path}: first missing: {', '.join(first)}")
        for sample in samples:
            check_sample_files(sample, crop_hw)
        by_split[split] = samples
    shared = {os.path.realpath(s[2]) for s in by_split["train"]} & {os.path.realpath(s[2]) for s in by_split["val"]}
    if shared:
        raise DataError(f"{min(shared)}: in both the train and the val split of {base_path} "
                        f"({len(shared)} shared samples): validation must not see training samples")
    return {split: len(samples) for split, samples in by_split.items()}


# ----------------------------------------------------------------------------- a synthetic FC2 tree

def write_synthetic_fc2(root, num, seed=0, h=384, w=512, val_fraction=0.2):
    """Write `num` synthetic samples in the real FC2 layout under `root`; returns split counts.

    Writes FlyingChairs2/{train,val}/NNNNNNN-{img_0.png,img_1.png,flow_01.flo} plus
    FC2_dirnames.txt (img_0 paths relative to root, in id order), FC2_train.txt and
    FC2_test.txt (0-based line indices). Sample id i holds entry i of
    make_synthetic_arrays(num, h, w, seed);
    the val ids are a seeded random subset, so the index lists are not contiguous ranges.
    Refuses to write over an existing FC2 tree. Needs eager execution (PNG encoding).
    """
    if not (isinstance(num, (int, np.integer)) and num >= 2):
        raise DataError(f"num (--num) must be an integer >= 2 (one train and one val sample), "
                        f"got {num!r}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    synthetic.check_image_size(h, w, "synthetic image")
    synthetic.check_seed(seed)
    for name in (FOLDER_ROOT, DIRNAMES_FILE):
        if os.path.exists(os.path.join(root, name)):
            raise DataError(f"{os.path.join(root, name)} already exists; choose an empty directory")
    n_val = min(num - 1, max(1, int(round(num * val_fraction))))
    val_ids = set(np.random.default_rng([seed, 1]).choice(num, n_val, replace=False).tolist())
    for split in SPLITS:
        os.makedirs(os.path.join(root, FOLDER_ROOT, split), exist_ok=True)
    rng = np.random.default_rng(seed)
    dirnames, split_indices = [], {split: [] for split in SPLITS}
    for i in range(num):
        split = "val" if i in val_ids else "train"
        img0, img1, flow = synthetic.make_synthetic_pair(rng, h, w)
        stem = os.path.join(root, FOLDER_ROOT, split, f"{i:07d}")
        flowio.write_png(stem + _SUFFIX["img0"], img0)
        flowio.write_png(stem + _SUFFIX["img1"], img1)
        flowio.write_flo(stem + _SUFFIX["flow"], flow)
        split_indices[split].append(len(dirnames))
        dirnames.append(f"{FOLDER_ROOT}/{split}/{i:07d}{_SUFFIX['img0']}")
    _write_lines(os.path.join(root, DIRNAMES_FILE), dirnames)
    for split in SPLITS:
        _write_lines(os.path.join(root, SPLIT_LIST_FILES[split]), split_indices[split])
    return {split: len(split_indices[split]) for split in SPLITS}


def _write_lines(path, items):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{item}\n" for item in items)


# -------------------------------------------------------------------------- batch pipeline

def normalise(images_uint8):
    """Scale uint8 images to float32 in [-1, 1] as x / 127.5 - 1.

    Accepts a numpy array (returns numpy) or a tf.Tensor (returns a tf.Tensor); both must be uint8.
    """
    if isinstance(images_uint8, (tf.Tensor, tf.Variable)):
        if images_uint8.dtype != tf.uint8:
            raise DataError(f"normalise expects uint8 images, got {images_uint8.dtype.name}")
        return tf.cast(images_uint8, tf.float32) / 127.5 - 1.0
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
        raise DataError(f"normalise expects uint8 images, got {images.dtype}")
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _tf_check(condition, name, problem):
    """An assert op whose failure message names the sample's file (a string tensor)."""
    return tf.debugging.Assert(condition, [tf.strings.join([name, problem])])


def _read_flo_tf(path):
    """Decode a .flo file with tf ops, checking tag, size and length; float32 [H, W, 2]."""
    raw = tf.io.read_file(path)
    size = tf.strings.length(raw)
    with tf.control_dependencies([_tf_check(size >= flowio.FLO_HEADER_BYTES, path,
                                            ": short .flo file (no 12-byte header)")]):
        tag = tf.io.decode_raw(tf.strings.substr(raw, 0, 4), tf.float32, little_endian=True)[0]
        width_height = tf.io.decode_raw(tf.strings.substr(raw, 4, 8), tf.int32, little_endian=True)
    width, height = width_height[0], width_height[1]
    expected = flowio.FLO_HEADER_BYTES + 8 * tf.cast(width, tf.int64) * tf.cast(height, tf.int64)
    checks = [
        _tf_check(tf.equal(tag, flowio.FLO_TAG), path, f": wrong .flo tag (expected {flowio.FLO_TAG})"),
        _tf_check(tf.reduce_all([width >= 1, width <= flowio.FLO_MAX_SIDE,
                                 height >= 1, height <= flowio.FLO_MAX_SIDE]),
                  path, ": impossible .flo width/height"),
        _tf_check(tf.equal(tf.cast(size, tf.int64), expected), path,
                  ": .flo length does not match width x height"),
    ]
    with tf.control_dependencies(checks):
        values = tf.io.decode_raw(tf.strings.substr(raw, flowio.FLO_HEADER_BYTES, size - flowio.FLO_HEADER_BYTES),
                                  tf.float32, little_endian=True)
    return tf.reshape(values, tf.stack([height, width, 2]))


def _read_png_tf(path):
    """Decode a PNG file as RGB uint8 [H, W, 3], checking the signature so errors name the file."""
    raw = tf.io.read_file(path)
    is_png = tf.equal(tf.strings.substr(raw, 0, len(flowio.PNG_SIGNATURE)), flowio.PNG_SIGNATURE)
    with tf.control_dependencies([_tf_check(is_png, path, ": not a PNG file")]):
        return tf.io.decode_png(raw, channels=3)


def _crop_offsets(image_hw, crop_hw, train, seed, position):
    """Top-left corner of the crop: seeded random per element position (train) or centred (eval)."""
    room = image_hw - tf.constant(crop_hw, tf.int32)
    if not train:
        return room // 2
    # stateless and keyed by the element's position in the stream, so the crops do not
    # depend on how the parallel map schedules its work
    u = tf.random.stateless_uniform([2], seed=tf.stack([tf.constant(seed, tf.int64), position]))
    return tf.minimum(tf.cast(tf.floor(u * tf.cast(room + 1, tf.float32)), tf.int32), room)


def _make_sample_fn(crop_hw, train, max_flow, seed, load):
    """Map function (position, index) -> (images [h, w, 6] in [-1, 1], flow [h, w, 2])."""
    crop_h, crop_w = crop_hw

    def sample(position, index):
        img0, img1, flow, name = load(index)
        image_hw = tf.shape(flow)[:2]
        checks = [
            _tf_check(tf.reduce_all([tf.equal(tf.shape(img0)[:2], image_hw),
                                     tf.equal(tf.shape(img1)[:2], image_hw)]),
                      name, ": img_0, img_1 and flow_01 differ in size"),
            _tf_check(tf.reduce_all(image_hw >= crop_hw), name,
                      f": image smaller than the {crop_h}x{crop_w} crop"),
            # the whole flow, not just the crop: clipping would turn a NaN into a plausible value
            _tf_check(tf.reduce_all(tf.math.is_finite(flow)), name, ": flow holds non-finite values (NaN or inf)"),
        ]
        with tf.control_dependencies(checks):
            top, left = tf.unstack(_crop_offsets(image_hw, crop_hw, train, seed, position))
        window = (slice(top, top + crop_h), slice(left, left + crop_w))
        images = tf.concat([normalise(img0[window]), normalise(img1[window])], axis=-1)
        flow = flow[window]
        if train:
            flow = tf.clip_by_value(flow, -float(max_flow), float(max_flow))
        return tf.ensure_shape(images, [crop_h, crop_w, 6]), tf.ensure_shape(flow, [crop_h, crop_w, 2])

    return sample


def _path_loader(samples, crop_hw):
    """Loader for FC2 files; fails early, naming the file, if the first sample is smaller
    than the crop (every sample is checked again at run time)."""
    for sample in samples:
        if not (isinstance(sample, (tuple, list)) and len(sample) == 3
                and all(isinstance(p, str) for p in sample)):
            raise DataError(f"make_dataset: each sample must be an (img0, img1, flow) path tuple, "
                            f"got {sample!r}")
    flow_path = samples[0][2]
    height, width = flowio.flo_shape(flow_path)
    if height < crop_hw[0] or width < crop_hw[1]:
        raise DataError(f"{flow_path}: {height}x{width} sample is smaller than the "
                        f"{crop_hw[0]}x{crop_hw[1]} crop")
    table = tf.constant(np.array(samples, dtype=object))

    def load(index):
        paths = table[index]
        return _read_png_tf(paths[0]), _read_png_tf(paths[1]), _read_flo_tf(paths[2]), paths[2]

    return len(samples), load


def _array_loader(arrays, crop_hw):
    """Loader for in-memory arrays from make_synthetic_arrays; shapes are checked up front."""
    missing = {"img0", "img1", "flow"} - set(arrays)
    if missing:
        raise DataError(f"make_dataset: synthetic source lacks key(s) {', '.join(sorted(missing))}")
    img0, img1, flow = (np.asarray(arrays[k]) for k in ("img0", "img1", "flow"))
    n, height, width = flow.shape[:3] if flow.ndim == 4 else (-1, -1, -1)
    if (img0.dtype != np.uint8 or img1.dtype != np.uint8 or img0.shape != (n, height, width, 3)
            or img1.shape != img0.shape or flow.shape != (n, height, width, 2)):
        raise DataError(f"make_dataset: synthetic source needs img0/img1 uint8 [N, H, W, 3] and "
                        f"flow [N, H, W, 2], got {img0.shape} {img0.dtype}, {img1.shape} {img1.dtype}, "
                        f"{flow.shape}")
    if height < crop_hw[0] or width < crop_hw[1]:
        raise DataError(f"make_dataset: synthetic images {height}x{width} are smaller than the "
                        f"{crop_hw[0]}x{crop_hw[1]} crop")
    flow = flow.astype(np.float32, copy=False)

    def fetch(index):
        return img0[index], img1[index], flow[index]

    def load(index):
        # numpy_function reads the arrays where they are; embedding them as graph constants
        # would copy them into the GraphDef and its serialised dataset several times over
        sample = tf.numpy_function(fetch, [index], (tf.uint8, tf.uint8, tf.float32), stateful=False)
        shapes = ([height, width, 3], [height, width, 3], [height, width, 2])
        img0_t, img1_t, flow_t = (tf.ensure_shape(t, s) for t, s in zip(sample, shapes))
        name = tf.strings.join(["synthetic sample ", tf.strings.as_string(index)])
        return img0_t, img1_t, flow_t, name

    return n, load


def batch_samples(seed, step, batch_size, num_samples):
    """(positions, indices) int64 [batch_size] of training batch `step`: stream positions
    step * batch_size onwards, and the sample each one reads. The stream visits every sample once
    per epoch of `num_samples` positions, in an order drawn from (seed, epoch) alone, so every
    batch is a pure function of (seed, step): a resumed run reads what an unbroken one would."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_samples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
        here = epochs == epoch
        indices[here] = _epoch_order(int(seed), int(epoch), int(num_samples))[offsets[here]]
    return positions, indices


@functools.lru_cache(maxsize=4)
def _epoch_order(seed, epoch, num_samples):
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def _training_positions(num_samples, batch_size, seed, start_step, shard):
    """Endless (position, index) elements from training batch `start_step` on (see batch_samples),
    of each batch the slice of `shard` (index, count) (positions key the crops: shards are exact)."""
    def step_elements(step):
        size, first = batch_size // shard[1], shard[0] * (batch_size // shard[1])
        share = lambda s: [a[first:first + size] for a in batch_samples(seed, int(s), batch_size, num_samples)]  # noqa
        positions, indices = tf.numpy_function(share, [step], (tf.int64, tf.int64), stateful=False)
        return tf.ensure_shape(positions, [size]), tf.ensure_shape(indices, [size])

    return tf.data.Dataset.range(start_step, np.iinfo(np.int64).max).map(step_elements).unbatch()


def make_dataset(source, batch_size, crop_hw, train, max_flow, seed, start_step=0, shard=(0, 1)):
    """Batches (images float32 [B, h, w, 6] in [-1, 1], flow float32 [B, h, w, 2]).

    source: a list of (img0, img1, flow) path tuples (FC2 on disk) or a dict from
    make_synthetic_arrays. train=True: batches `start_step`, `start_step` + 1, ... forever, each
    a pure function of (seed, step) (see batch_samples): its samples, and a random crop keyed by
    (seed, stream position); flow clipped to +/- max_flow, full batches only. train=False: fixed
    order, one pass, centre crop, unclipped flow, last partial batch kept. Works eagerly and
    inside a tf.compat.v1 Graph (e.g. via tf.compat.v1.data.make_one_shot_iterator). `shard` (index,
    count): replica `index`'s share of each training batch (distribute.py; count divides batch_size).
    """
    crop_hw = tuple(int(v) for v in crop_hw)
    if len(crop_hw) != 2 or min(crop_hw) < 1:
        raise DataError(f"make_dataset: crop_hw must be two positive ints, got {crop_hw!r}")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise DataError(f"make_dataset: batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(seed, (int, np.integer)) or not isinstance(start_step, (int, np.integer)) or start_step < 0:
        raise DataError(f"make_dataset: seed and start_step must be integers >= 0, got {seed!r}, {start_step!r}")
    if train and not (max_flow is not None and max_flow > 0):
        raise DataError(f"make_dataset: training needs max_flow > 0, got {max_flow!r}")
    if isinstance(source, dict):
        n, load = _array_loader(source, crop_hw)
    elif isinstance(source, (list, tuple)) and source:
        n, load = _path_loader(list(source), crop_hw)
    else:
        raise DataError("make_dataset: source must be a non-empty list of (img0, img1, flow) "
                        "path tuples or a dict from make_synthetic_arrays")
    elements = (_training_positions(n, int(batch_size), int(seed), int(start_step), shard) if train
                else tf.data.Dataset.range(n).enumerate())
    dataset = elements.map(_make_sample_fn(crop_hw, train, max_flow, seed, load),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size // shard[1], drop_remainder=train).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- naming a faulty sample

def check_sample_files(sample, crop_hw=(1, 1)):
    """check_eval_sample, and the sample at least `crop_hw` in size; returns (height, width)."""
    height, width = flowio.check_eval_sample(sample)
    if height < crop_hw[0] or width < crop_hw[1]:
        raise DataError(f"{sample[2]}: {height}x{width} sample is smaller than the {crop_hw[0]}x{crop_hw[1]} crop")
    return height, width


def check_training_sample(sample, crop_hw):
    """Read a training sample whole (load_eval_sample) and check it fits `crop_hw`: a DataError
    naming the file if it cannot be used. What names the culprit when a training batch fails."""
    check_sample_files(sample, crop_hw)
    flowio.load_eval_sample(sample)


def training_batch_samples(source, seed, steps, batch_size):
    """The (img0, img1, flow) paths training batches `steps` read (see batch_samples); none for
    in-memory synthetic data."""
    if isinstance(source, dict):
        return []
    return [source[i] for step in steps for i in batch_samples(seed, step, batch_size, len(source))[1]]


def find_fault(samples, crop_hw):
    """The DataError of the first of `samples` that check_training_sample refuses, or None: what
    names the file when a batch of them failed inside TensorFlow or gave a non-finite loss."""
    for sample in samples:
        try:
            check_training_sample(sample, crop_hw)
        except DataError as err:
            return err
    return None


# -------------------------------------------------------------------------------- open_data

_CFG_KEYS = ("base_path", "data_layout", "synthetic", "synthetic_train_size",
             "synthetic_val_size", "input_h", "input_w", "seed")


def _synthetic_data(cfg, reason):
    """Synthetic train and val pairs at the input size, drawn from `synthetic_seed` (-1 or absent:
    the run's `seed`) with the knobs of `synthetic_scene` (absent: the default scenes)."""
    data_seed = cfg.get("synthetic_seed", -1)
    data_seed = cfg["seed"] if data_seed == -1 else data_seed
    synthetic.check_seed(data_seed)
    scene = synthetic.Scene.of(cfg.get("synthetic_scene"))
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(data_seed).spawn(2)]
    data = {}
    for split, key, split_seed in zip(SPLITS, ("synthetic_train_size", "synthetic_val_size"), seeds):
        if not (isinstance(cfg[key], (int, np.integer)) and cfg[key] >= 1):
            raise DataError(f"config {key} must be a positive integer, got {cfg[key]!r}")
        data[split] = synthetic.make_synthetic_arrays(cfg[key], cfg["input_h"], cfg["input_w"], split_seed, scene)
    _log.warning("%s", reason)
    return dict(data_source="synthetic", reason=reason, train=data["train"], val=data["val"],
                counts={split: len(data[split]["flow"]) for split in SPLITS}, layout=None)


def open_data(cfg):
    """Resolve the data a run uses: dict(data_source, reason, train, val, counts, layout).

    Synthetic (announced via logging, layout None) only if cfg["synthetic"] is true or
    cfg["base_path"] is ""; train and val are generated at (input_h, input_w) with two seeds
    spawned from cfg["seed"]. Otherwise base_path must hold a complete FC2 dataset in the
    given layout ("auto", "lists" or "folders"); anything missing raises DataError.
    """
    missing = [key for key in _CFG_KEYS if key not in cfg]
    if missing:
        raise DataError(f"data config lacks key(s): {', '.join(missing)}")
    if cfg["synthetic"]:
        ignored = f" (base_path {cfg['base_path']!r} ignored)" if cfg["base_path"] else ""
        return _synthetic_data(cfg, "synthetic data: --synthetic requested" + ignored)
    base_path = cfg["base_path"]
    if base_path == "":
        return _synthetic_data(cfg, "synthetic data: no base_path configured")
    if not os.path.isdir(base_path):
        raise DataError(f"base_path {base_path!r} is not a directory")
    layout, why = (_detect_layout(base_path) if cfg["data_layout"] == "auto"
                   else (_resolve_layout(base_path, cfg["data_layout"]), "data_layout"))
    counts = check_dataset(base_path, layout, (cfg["input_h"], cfg["input_w"]))
    return dict(data_source="fc2", reason=f"FC2 data from {base_path} ({layout} layout: {why})",
                train=list_samples(base_path, "train", layout),
                val=list_samples(base_path, "val", layout), counts=counts, layout=layout)


# -------------------------------------------------------------------------------------- CLI

def _parse_args(argv):
    parser = ArgumentParser(
        description="FlyingChairs2 data: write a synthetic FC2 tree or check a dataset.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--make_synthetic_fc2", metavar="DIR",
                        help="write synthetic samples in the FC2 layout")
    action.add_argument("--check", action="store_true",
                        help="check every sample (files, .flo and PNG headers, sizes, splits) and count them")
    parser.add_argument("--num", type=int, help="number of synthetic samples (with --make_synthetic_fc2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pairs")
    parser.add_argument("--h", type=int, default=384, help="synthetic image height")
    parser.add_argument("--w", type=int, default=512, help="synthetic image width")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="the share of pairs in the val split")
    parser.add_argument("--base_path", help="dataset root (with --check)")
    args = parser.parse_args(argv)
    if args.make_synthetic_fc2 is not None and args.num is None:
        parser.error("--make_synthetic_fc2 needs --num")
    if args.check and not args.base_path:
        parser.error("--check needs --base_path")
    return args


def _check_both_layouts(base_path):
    """Check every layout present under base_path; returns printable lines."""
    layouts = [layout for layout, marker in (("lists", DIRNAMES_FILE), ("folders", FOLDER_ROOT))
               if os.path.exists(os.path.join(base_path, marker))]
    if not layouts:
        detect_layout(base_path)  # raises the precise error (not a directory / nothing there)
    lines = []
    for layout in layouts:
        counts = check_dataset(base_path, layout)
        lines.append(f"{layout:8s} {base_path}: " + " ".join(f"{s}={counts[s]}" for s in SPLITS))
    return lines


def main(argv=None):
    """CLI entry point; returns the process exit status."""
    args = _parse_args(argv)
    try:
        if args.check:
            print("\n".join(_check_both_layouts(args.base_path)))
        else:
            counts = write_synthetic_fc2(args.make_synthetic_fc2, args.num, seed=args.seed,
                                         h=args.h, w=args.w, val_fraction=args.val_fraction)
            root = args.make_synthetic_fc2
            print(f"wrote {counts['train']} train + {counts['val']} val synthetic samples "
                  f"({args.h}x{args.w}, seed {args.seed}) to {root}: "
                  f"{FOLDER_ROOT}/train, {FOLDER_ROOT}/val, {DIRNAMES_FILE}, "
                  f"{SPLIT_LIST_FILES['train']}, {SPLIT_LIST_FILES['val']}")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
