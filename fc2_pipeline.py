"""The `tf.data` input pipeline of training and of the scoring batches: FC2 files (a list of
(img0, img1, flow) path tuples, data_fc2.list_samples) or in-memory synthetic arrays, decoded and
checked with TensorFlow ops (an assert names the sample's file), cropped, normalised to [-1, 1] and
batched. Training batch `step` is a pure function of (seed, step) (batch_samples), so a resumed run
reads what an unbroken one would, and a replica's shard of it is exact.
"""
import functools

import numpy as np
from tensorflow_quiet import tf

import flowio
from errors import DataError


# ----------------------------------------------------------------------------- decoding, cropping, batching

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


def training_batch_samples(source, seed, steps, batch_size):
    """The (img0, img1, flow) paths training batches `steps` read (see batch_samples); none for
    in-memory synthetic data."""
    if isinstance(source, dict):
        return []
    return [source[i] for step in steps for i in batch_samples(seed, step, batch_size, len(source))[1]]


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
