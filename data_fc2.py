"""FlyingChairs2 data for EdgeFlowNAS: `.flo` I/O, FC2 list files and folders, synthetic
FlyingChairs-style pairs, and the `tf.data` batch pipeline that feeds training and evaluation;
the MPI-Sintel and KITTI 2015 training layouts read at full frame for evaluation.

Every data problem raises `DataError` with a one-line message that names the file or field.
Synthetic data is used only when asked for or when no dataset is configured at all
(`open_data`); a configured but broken dataset is an error, never a silent substitute.

CLI:
    python data_fc2.py --make_synthetic_fc2 DIR --num N [--seed S] [--h H --w W]
    python data_fc2.py --check --base_path DIR
"""

import argparse
import collections.abc
import concurrent.futures
import functools
import logging
import os
import re
import struct
import sys
from dataclasses import dataclass

import numpy as np
import devices  # before tensorflow: quietens its start-up (see devices.py)
import tensorflow as tf

SPLITS = ("train", "val")

FLO_TAG = 202021.25  # Middlebury magic number; its little-endian bytes spell b"PIEH"
FLO_MAX_SIDE = 99999  # the sanity bound on width and height used by Middlebury's flowIO.cpp
_FLO_HEADER_BYTES = 12
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

DIRNAMES_FILE = "FC2_dirnames.txt"
SPLIT_LIST_FILES = {"train": "FC2_train.txt", "val": "FC2_test.txt"}
FOLDER_ROOT = "FlyingChairs2"
_SUFFIX = {"img0": "-img_0.png", "img1": "-img_1.png", "flow": "-flow_01.flo"}
_SAMPLE_FILE = re.compile(r"^(\d+)(-img_0\.png|-img_1\.png|-flow_01\.flo)$")
_MAX_NAMED_MISSING = 3

_log = logging.getLogger(__name__)


class DataError(ValueError):
    """Any data problem; the message is one line that names the offending file or field."""

    def __init__(self, message):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


# ----------------------------------------------------------------------------- .flo I/O

def _check_flo_header(path, header, file_size):
    """Validate a .flo header (first 12 bytes) against the file size; return (height, width)."""
    if file_size < _FLO_HEADER_BYTES:
        raise DataError(f"{path}: short .flo file: {file_size} bytes, the header alone needs 12")
    tag = np.frombuffer(header, "<f4", count=1)[0]
    if tag != np.float32(FLO_TAG):
        raise DataError(f"{path}: wrong .flo tag {header[:4]!r} (expected b'PIEH' = {FLO_TAG})")
    width, height = (int(v) for v in np.frombuffer(header, "<i4", count=2, offset=4))
    if not (1 <= width <= FLO_MAX_SIDE and 1 <= height <= FLO_MAX_SIDE):
        raise DataError(f"{path}: impossible .flo size width={width} height={height} "
                        f"(each must be 1..{FLO_MAX_SIDE})")
    expected = _FLO_HEADER_BYTES + 8 * width * height
    if file_size < expected:
        raise DataError(f"{path}: short .flo file: {file_size} bytes, "
                        f"{width}x{height} flow needs {expected}")
    if file_size > expected:
        raise DataError(f"{path}: .flo file has {file_size - expected} bytes after "
                        f"the {width}x{height} flow data")
    return height, width


def _flo_shape(path):
    """(height, width) of a .flo file, validated from its header and size without reading the data."""
    try:
        with open(path, "rb") as f:
            header = f.read(_FLO_HEADER_BYTES)
        size = os.path.getsize(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read .flo file ({e.strerror})") from None
    return _check_flo_header(path, header, size)


def read_flo(path):
    """Read a Middlebury `.flo` file into a float32 array [H, W, 2] (u, v).

    Raises DataError naming the file for an unreadable file, a wrong tag, an impossible
    width/height, or a size that does not match width x height.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read .flo file ({e.strerror})") from None
    height, width = _check_flo_header(path, data[:_FLO_HEADER_BYTES], len(data))
    flow = np.frombuffer(data, "<f4", count=2 * height * width, offset=_FLO_HEADER_BYTES)
    return flow.reshape(height, width, 2).astype(np.float32)


def write_flo(path, flow):
    """Write flow [H, W, 2] as a little-endian Middlebury `.flo` file (tag 202021.25).

    float32 input is written bit-exactly; other real dtypes are converted to float32.
    """
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise DataError(f"{path}: flow to write must have shape [H, W, 2], got {flow.shape}")
    height, width = flow.shape[:2]
    if not (1 <= width <= FLO_MAX_SIDE and 1 <= height <= FLO_MAX_SIDE):
        raise DataError(f"{path}: cannot write .flo of size width={width} height={height} "
                        f"(each must be 1..{FLO_MAX_SIDE})")
    with open(path, "wb") as f:
        f.write(np.array([FLO_TAG], "<f4").tobytes())
        f.write(np.array([width, height], "<i4").tobytes())
        f.write(np.ascontiguousarray(flow, dtype="<f4").tobytes())


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


# ------------------------------------------------------------------------ synthetic chairs
#
# A scene is a stack of layers: layer 0 is a background covering the whole frame, layers
# 1..n are textured objects drawn in that order (later on top). Each layer has a texture
# defined in its own canonical coordinates, a placement canonical -> frame 0, and an affine
# motion frame 0 -> frame 1. Both frames are rendered by inverse mapping every pixel centre
# into each layer's canonical coordinates, so colours and flow are exact at pixel centres:
# the flow of a frame-0 pixel is its topmost layer's motion applied to it, minus itself.
# Coordinates are (x, y) = (column, row).


def _rotation(theta):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


@dataclass(frozen=True)
class _Texture:
    """Smooth colour field: base colour + plane waves + smoothstep-interpolated value noise."""

    base: np.ndarray  # (3,)
    wave_vectors: np.ndarray  # (K, 2) radians per canonical unit
    wave_phases: np.ndarray  # (K,)
    wave_amps: np.ndarray  # (K, 3)
    lattice: np.ndarray  # (gy, gx, 3) noise values at lattice nodes
    lattice_origin: np.ndarray  # (2,) canonical (x, y) of node [0, 0]
    cell: float  # lattice spacing in canonical units

    def __call__(self, q):
        """Colours (N, 3), float, of canonical points q (N, 2)."""
        waves = np.sin(q @ self.wave_vectors.T + self.wave_phases) @ self.wave_amps
        return np.clip(self.base + waves + self._noise(q), 0.0, 255.0)

    def _noise(self, q):
        gy, gx = self.lattice.shape[:2]
        g = np.clip((q - self.lattice_origin) / self.cell, 0.0, [gx - 1, gy - 1])
        i0 = np.minimum(np.floor(g), [gx - 2, gy - 2]).astype(np.int64)
        t = g - i0
        s = t * t * (3.0 - 2.0 * t)  # smoothstep keeps the field C1 across lattice cells
        sx, sy = s[:, :1], s[:, 1:]
        ix, iy = i0[:, 0], i0[:, 1]
        top = (1 - sx) * self.lattice[iy, ix] + sx * self.lattice[iy, ix + 1]
        bottom = (1 - sx) * self.lattice[iy + 1, ix] + sx * self.lattice[iy + 1, ix + 1]
        return (1 - sy) * top + sy * bottom


def _random_texture(rng, lo, hi):
    """A random texture whose noise lattice covers the canonical box [lo, hi] (x, y)."""
    n_waves = 4
    wavelengths = rng.uniform(12.0, 48.0, n_waves)
    angles = rng.uniform(0.0, 2 * np.pi, n_waves)
    vectors = (2 * np.pi / wavelengths)[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    cell = rng.uniform(4.0, 10.0)
    gx, gy = (np.ceil((np.asarray(hi) - lo) / cell).astype(int) + 2)
    return _Texture(
        base=rng.uniform(60.0, 195.0, 3),
        wave_vectors=vectors,
        wave_phases=rng.uniform(0.0, 2 * np.pi, n_waves),
        wave_amps=rng.uniform(15.0, 45.0, (n_waves, 3)) * rng.choice([-1.0, 1.0], (n_waves, 3)),
        lattice=rng.normal(0.0, 40.0, (gy, gx, 3)),
        lattice_origin=np.asarray(lo, dtype=np.float64),
        cell=cell,
    )


@dataclass(frozen=True)
class _Shape:
    """Object silhouette in canonical coordinates: an ellipse, or a convex polygon."""

    radii: np.ndarray  # (2,) ellipse semi-axes (also the polygon's circumscribing ellipse)
    vertices: np.ndarray | None  # (V, 2) counter-clockwise around the origin, or None

    def contains(self, q):
        """Boolean mask (N,) of canonical points q (N, 2) inside the shape."""
        if self.vertices is None:
            return np.sum((q / self.radii) ** 2, axis=1) <= 1.0
        inside = np.ones(len(q), dtype=bool)
        for a, b in zip(self.vertices, np.roll(self.vertices, -1, axis=0)):
            edge, rel = b - a, q - a
            inside &= edge[0] * rel[:, 1] - edge[1] * rel[:, 0] >= 0.0
        return inside


def _random_shape(rng, size):
    radii = rng.uniform(0.10, 0.25, 2) * size
    if rng.random() < 0.5:
        return _Shape(radii=radii, vertices=None)
    n = int(rng.integers(4, 9))
    # evenly spaced angles with jitter keep every gap below pi, so the origin stays inside
    angles = 2 * np.pi * (np.arange(n) + rng.uniform(-0.3, 0.3, n)) / n
    vertices = radii * np.stack([np.cos(angles), np.sin(angles)], 1)
    return _Shape(radii=radii, vertices=vertices)


def _random_motion(rng, centre, size, max_degrees, max_log_scale, shift_range):
    """Affine motion (A, b), p1 = A p0 + b: rotation and per-axis scale about `centre`, then a
    shift whose length is drawn from shift_range (fractions of `size`) in a random direction."""
    theta = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    scales = np.exp(rng.uniform(-max_log_scale, max_log_scale, 2))
    direction = rng.uniform(0.0, 2 * np.pi)
    shift = rng.uniform(*shift_range) * size * np.array([np.cos(direction), np.sin(direction)])
    a = _rotation(theta) @ np.diag(scales)
    return a, centre + shift - a @ centre


@dataclass(frozen=True)
class _Layer:
    texture: _Texture
    shape: _Shape | None  # None: covers the whole frame (background)
    place: tuple  # (M, v): canonical q -> frame-0 position M q + v
    motion: tuple  # (A, b): frame-0 position p -> frame-1 position A p + b

    def to_canonical(self, points, frame):
        """Canonical coordinates of image points (N, 2) in frame 0 or 1."""
        m, v = self.place
        if frame == 1:
            a, b = self.motion
            m, v = a @ m, a @ v + b
        return (points - v) @ np.linalg.inv(m).T


def _random_scene(rng, h, w):
    """Background plus 3-6 objects, each with its own texture, shape and affine motion."""
    size = min(h, w)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    margin = 0.5 * max(h, w)  # background canonical box must cover frame 1 mapped back too
    layers = [_Layer(
        texture=_random_texture(rng, [-margin, -margin], [w + margin, h + margin]),
        shape=None,
        place=(np.eye(2), np.zeros(2)),
        motion=_random_motion(rng, centre, size, 2.0, 0.02, (0.02, 0.08)),
    )]
    for _ in range(int(rng.integers(3, 7))):
        shape = _random_shape(rng, size)
        reach = shape.radii.max() + 1.0
        position = rng.uniform(0.1, 0.9, 2) * [w - 1, h - 1]
        layers.append(_Layer(
            texture=_random_texture(rng, [-reach, -reach], [reach, reach]),
            shape=shape,
            place=(_rotation(rng.uniform(0.0, 2 * np.pi)), position),
            motion=_random_motion(rng, position, size, 8.0, 0.08, (0.02, 0.12)),
        ))
    return layers


def _render(layers, points, frame):
    """Colours (N, 3) float and topmost-layer index (N,) of image points in one frame."""
    canonical = [layer.to_canonical(points, frame) for layer in layers]
    label = np.zeros(len(points), dtype=np.int64)
    for k in range(1, len(layers)):
        label[layers[k].shape.contains(canonical[k])] = k
    colour = np.empty((len(points), 3))
    for k, layer in enumerate(layers):
        visible = label == k
        colour[visible] = layer.texture(canonical[k][visible])
    return colour, label


def _to_uint8(colour, h, w):
    return np.clip(np.rint(colour), 0, 255).astype(np.uint8).reshape(h, w, 3)


def _check_seed(seed):
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise DataError(f"synthetic seed must be a non-negative integer, got {seed!r}")


def _check_image_size(h, w, what):
    if not (isinstance(h, (int, np.integer)) and isinstance(w, (int, np.integer)) and h >= 1 and w >= 1):
        raise DataError(f"{what} size must be positive integers, got h={h!r} w={w!r}")


def render_synthetic_scene(rng, h, w):
    """Render one random FlyingChairs-style scene.

    Returns dict(img0, img1 uint8 [h, w, 3], flow float32 [h, w, 2] (exact forward flow of
    every frame-0 pixel), layers0, layers1 int64 [h, w]: index of the topmost layer at each
    pixel, 0 = background). The layer maps let callers find occluded pixels.
    """
    _check_image_size(h, w, "synthetic image")
    layers = _random_scene(rng, h, w)
    ys, xs = np.mgrid[0:h, 0:w]
    points = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    colour0, label0 = _render(layers, points, 0)
    colour1, label1 = _render(layers, points, 1)
    a = np.stack([layer.motion[0] for layer in layers])[label0]
    b = np.stack([layer.motion[1] for layer in layers])[label0]
    flow = np.einsum("nij,nj->ni", a, points) + b - points
    return dict(
        img0=_to_uint8(colour0, h, w),
        img1=_to_uint8(colour1, h, w),
        flow=flow.reshape(h, w, 2).astype(np.float32),
        layers0=label0.reshape(h, w),
        layers1=label1.reshape(h, w),
    )


def make_synthetic_pair(rng, h, w):
    """One synthetic pair drawn from numpy Generator `rng`:
    (img0, img1 uint8 [h, w, 3], flow float32 [h, w, 2])."""
    scene = render_synthetic_scene(rng, h, w)
    return scene["img0"], scene["img1"], scene["flow"]


def make_synthetic_arrays(num, h, w, seed):
    """`num` synthetic pairs from np.random.default_rng(seed), stacked:
    dict(img0=[N, h, w, 3] uint8, img1=[N, h, w, 3] uint8, flow=[N, h, w, 2] float32)."""
    if not (isinstance(num, (int, np.integer)) and num >= 1):
        raise DataError(f"number of synthetic samples must be a positive integer, got {num!r}")
    _check_image_size(h, w, "synthetic image")
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    arrays = dict(img0=np.empty((num, h, w, 3), np.uint8), img1=np.empty((num, h, w, 3), np.uint8),
                  flow=np.empty((num, h, w, 2), np.float32))
    for i in range(num):
        arrays["img0"][i], arrays["img1"][i], arrays["flow"][i] = make_synthetic_pair(rng, h, w)
    return arrays


def _write_png(path, image):
    with open(path, "wb") as f:
        f.write(tf.io.encode_png(image).numpy())


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
    _check_image_size(h, w, "synthetic image")
    _check_seed(seed)
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
        img0, img1, flow = make_synthetic_pair(rng, h, w)
        stem = os.path.join(root, FOLDER_ROOT, split, f"{i:07d}")
        _write_png(stem + _SUFFIX["img0"], img0)
        _write_png(stem + _SUFFIX["img1"], img1)
        write_flo(stem + _SUFFIX["flow"], flow)
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
    with tf.control_dependencies([_tf_check(size >= _FLO_HEADER_BYTES, path,
                                            ": short .flo file (no 12-byte header)")]):
        tag = tf.io.decode_raw(tf.strings.substr(raw, 0, 4), tf.float32, little_endian=True)[0]
        width_height = tf.io.decode_raw(tf.strings.substr(raw, 4, 8), tf.int32, little_endian=True)
    width, height = width_height[0], width_height[1]
    expected = _FLO_HEADER_BYTES + 8 * tf.cast(width, tf.int64) * tf.cast(height, tf.int64)
    checks = [
        _tf_check(tf.equal(tag, FLO_TAG), path, f": wrong .flo tag (expected {FLO_TAG})"),
        _tf_check(tf.reduce_all([width >= 1, width <= FLO_MAX_SIDE,
                                 height >= 1, height <= FLO_MAX_SIDE]),
                  path, ": impossible .flo width/height"),
        _tf_check(tf.equal(tf.cast(size, tf.int64), expected), path,
                  ": .flo length does not match width x height"),
    ]
    with tf.control_dependencies(checks):
        values = tf.io.decode_raw(tf.strings.substr(raw, _FLO_HEADER_BYTES, size - _FLO_HEADER_BYTES),
                                  tf.float32, little_endian=True)
    return tf.reshape(values, tf.stack([height, width, 2]))


def _read_png_tf(path):
    """Decode a PNG file as RGB uint8 [H, W, 3], checking the signature so errors name the file."""
    raw = tf.io.read_file(path)
    is_png = tf.equal(tf.strings.substr(raw, 0, len(_PNG_SIGNATURE)), _PNG_SIGNATURE)
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
    height, width = _flo_shape(flow_path)
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


def _training_positions(num_samples, batch_size, seed, start_step):
    """Endless (position, index) elements from training batch `start_step` on (see batch_samples)."""
    def step_elements(step):
        positions, indices = tf.numpy_function(lambda s: batch_samples(seed, int(s), batch_size, num_samples),
                                               [step], (tf.int64, tf.int64), stateful=False)
        return tf.ensure_shape(positions, [batch_size]), tf.ensure_shape(indices, [batch_size])

    return tf.data.Dataset.range(start_step, np.iinfo(np.int64).max).map(step_elements).unbatch()


def make_dataset(source, batch_size, crop_hw, train, max_flow, seed, start_step=0,
                 num_parallel_calls=tf.data.AUTOTUNE):
    """Batches (images float32 [B, h, w, 6] in [-1, 1], flow float32 [B, h, w, 2]).

    source: a list of (img0, img1, flow) path tuples (FC2 on disk) or a dict from
    make_synthetic_arrays. train=True: batches `start_step`, `start_step` + 1, ... forever, each
    a pure function of (seed, step) (see batch_samples): its samples, and a random crop keyed by
    (seed, stream position); flow clipped to +/- max_flow, full batches only. train=False: fixed
    order, one pass, centre crop, unclipped flow, last partial batch kept. Works eagerly and
    inside a tf.compat.v1 Graph (e.g. via tf.compat.v1.data.make_one_shot_iterator).
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
    elements = (_training_positions(n, int(batch_size), int(seed), int(start_step)) if train
                else tf.data.Dataset.range(n).enumerate())
    dataset = elements.map(_make_sample_fn(crop_hw, train, max_flow, seed, load),
                           num_parallel_calls=num_parallel_calls, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=train).prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------- evaluation datasets: Sintel, KITTI 2015
#
# Scored at full frame: every sample is read whole, padded at the bottom and right to a multiple
# of 4 (images by edge replication, flow and validity with 0), so the padded pixels count for no
# metric. Samples are read on demand: a full Sintel or KITTI split does not fit in memory as
# float arrays.

EVAL_DATASETS = ("fc2", "sintel", "kitti")
SINTEL_PASSES = ("clean", "final")
SINTEL_FLOW_DIR = "flow"
KITTI_IMAGE_DIR = "image_2"
KITTI_FLOW_DIR = "flow_occ"
KITTI_FLOW_OFFSET = 2 ** 15  # KITTI's 16-bit flow: u = (R - 2^15) / 64, v = (G - 2^15) / 64, valid = B > 0
KITTI_FLOW_SCALE = 64.0
PAD_MULTIPLE = 4  # the network's input sides must be multiples of 4
_SINTEL_FRAME = re.compile(r"^frame_(\d+)\.png$")
_KITTI_FRAME = re.compile(r"^(\d+)_10\.png$")
_PNG_COLOUR_RGB = 2
_PNG_COLOUR_GREY = (0, 4)  # grey, grey + alpha
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every PNG ends with


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
            samples.append((os.path.join(image_dir, frames[number]), os.path.join(image_dir, frames[number + 1]), flow))
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


def _read_bytes(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror})") from None


def png_header(path, raw):
    """(height, width, bit_depth, colour_type) from the IHDR chunk of PNG bytes `raw`, or DataError
    naming `path` if they are not a PNG."""
    if len(raw) < 33 or raw[:8] != _PNG_SIGNATURE or raw[12:16] != b"IHDR":
        raise DataError(f"{path}: not a PNG file")
    width, height = struct.unpack(">II", raw[16:24])
    return height, width, raw[24], raw[25]


def _image_size(path, header):
    """(height, width) of an 8-bit colour PNG frame's header, else DataError naming the file
    (a grayscale frame is refused: optical flow is trained and scored on colour frames)."""
    height, width, depth, colour = header
    if depth != 8:
        raise DataError(f"{path}: expected an 8-bit PNG image, got {depth}-bit")
    if colour in _PNG_COLOUR_GREY:
        raise DataError(f"{path}: grayscale PNG (colour type {colour}): frames must be RGB")
    return height, width


def _kitti_flow_size(path, header):
    """(height, width) of a KITTI flow PNG's header if it is 16-bit RGB, else DataError naming the file."""
    height, width, depth, colour = header
    if depth != 16 or colour != _PNG_COLOUR_RGB:
        raise DataError(f"{path}: KITTI flow must be a 16-bit RGB PNG, got {depth}-bit colour type {colour}")
    return height, width


def _decode_png(path, raw, dtype):
    """RGB [H, W, 3] of PNG bytes with eager TensorFlow; a damaged file is a DataError naming it."""
    try:
        with tf.init_scope():  # eager even where a Session's graph is the default
            return tf.io.decode_png(raw, channels=3, dtype=dtype).numpy()
    except tf.errors.OpError as err:
        raise DataError(f"{path}: cannot decode PNG ({err.message.splitlines()[0]})") from None


def read_png_rgb(path):
    """An 8-bit PNG as RGB uint8 [H, W, 3] (grey or alpha converted), DataError naming the file
    if it is not an 8-bit PNG. Decodes with eager TensorFlow."""
    raw = _read_bytes(path, "PNG")
    _image_size(path, png_header(path, raw))
    return _decode_png(path, raw, tf.uint8)


def read_kitti_flow(path):
    """A KITTI 2015 flow PNG as (flow float32 [H, W, 2], valid float32 [H, W] of 0/1).

    16-bit RGB: u = (R - 2^15) / 64, v = (G - 2^15) / 64, valid where B > 0; flow is set to 0 at
    invalid pixels. Anything but a 16-bit RGB PNG is a DataError naming the file.
    """
    raw = _read_bytes(path, "KITTI flow PNG")
    _kitti_flow_size(path, png_header(path, raw))
    rgb = _decode_png(path, raw, tf.uint16).astype(np.float32)
    valid = (rgb[..., 2] > 0).astype(np.float32)
    flow = (rgb[..., :2] - KITTI_FLOW_OFFSET) / KITTI_FLOW_SCALE * valid[..., None]
    return flow, valid


def load_eval_sample(sample):
    """(img0, img1 uint8 [H, W, 3], flow float32 [H, W, 2], valid float32 [H, W]) of one
    (img0, img1, flow) path tuple: a `.flo` flow (every pixel valid) or a KITTI flow PNG.
    Frames and flow of different sizes are a DataError naming the file."""
    img0, img1 = read_png_rgb(sample[0]), read_png_rgb(sample[1])
    if sample[2].endswith(".flo"):
        flow = read_flo(sample[2])
        valid = np.ones(flow.shape[:2], np.float32)
        check_finite_flow(flow, sample[2])
    else:
        flow, valid = read_kitti_flow(sample[2])
    for path, array in ((sample[1], img1), (sample[2], flow)):
        if array.shape[:2] != img0.shape[:2]:
            raise DataError(f"{path}: size {array.shape[0]}x{array.shape[1]} differs from "
                            f"{img0.shape[0]}x{img0.shape[1]} of {sample[0]}")
    return img0, img1, flow, valid


def check_finite_flow(flow, name):
    """DataError naming `name` if the flow holds NaN or inf: it would make every metric NaN."""
    if not np.isfinite(flow).all():
        raise DataError(f"{name}: flow holds {np.count_nonzero(~np.isfinite(flow))} non-finite values (NaN or inf)")


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
    images = np.pad(normalise(np.concatenate([img0, img1], axis=-1)), pad + ((0, 0),), mode="edge")
    return images, np.pad(flow, pad + ((0, 0),)), np.pad(valid, pad)


def _png_file_header(path):
    """The IHDR fields of a PNG file (see png_header) from its first and last bytes: a file cut
    short (no IEND chunk at its end) is a DataError naming it."""
    try:
        with open(path, "rb") as f:
            header = png_header(path, f.read(33))
            f.seek(max(os.fstat(f.fileno()).st_size - len(_PNG_END), 0))
            end = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read PNG ({e.strerror})") from None
    if end != _PNG_END:
        raise DataError(f"{path}: truncated PNG (it does not end with an IEND chunk)")
    return header


def check_sample_files(sample, crop_hw=(1, 1)):
    """check_eval_sample, and the sample at least `crop_hw` in size; returns (height, width)."""
    height, width = check_eval_sample(sample)
    if height < crop_hw[0] or width < crop_hw[1]:
        raise DataError(f"{sample[2]}: {height}x{width} sample is smaller than the {crop_hw[0]}x{crop_hw[1]} crop")
    return height, width


def check_training_sample(sample, crop_hw):
    """Read a training sample whole (load_eval_sample) and check it fits `crop_hw`: a DataError
    naming the file if it cannot be used. What names the culprit when a training batch fails."""
    check_sample_files(sample, crop_hw)
    load_eval_sample(sample)


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


def check_eval_sample(sample):
    """(height, width) of an (img0, img1, flow) sample from its files' headers, without decoding:
    8-bit PNG frames, a `.flo` or a 16-bit RGB KITTI flow PNG, all of one size; else DataError
    naming the file."""
    sizes = [_image_size(path, _png_file_header(path)) for path in sample[:2]]
    sizes.append(_flo_shape(sample[2]) if sample[2].endswith(".flo")
                 else _kitti_flow_size(sample[2], _png_file_header(sample[2])))
    for path, size in zip(sample[1:], sizes[1:]):
        if size != sizes[0]:
            raise DataError(f"{path}: size {size[0]}x{size[1]} differs from {sizes[0][0]}x{sizes[0][1]} of {sample[0]}")
    return sizes[0]


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
        sizes = [check_eval_sample(s) for s in samples]
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
        padded = [pad_sample(*load_eval_sample(s)) for s in self.batches[index]]
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


# -------------------------------------------------------------------------------- open_data

_CFG_KEYS = ("base_path", "data_layout", "synthetic", "synthetic_train_size",
             "synthetic_val_size", "input_h", "input_w", "seed")


def _synthetic_data(cfg, reason):
    _check_seed(cfg["seed"])
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(cfg["seed"]).spawn(2)]
    data = {}
    for split, key, split_seed in zip(SPLITS, ("synthetic_train_size", "synthetic_val_size"), seeds):
        if not (isinstance(cfg[key], (int, np.integer)) and cfg[key] >= 1):
            raise DataError(f"config {key} must be a positive integer, got {cfg[key]!r}")
        data[split] = make_synthetic_arrays(cfg[key], cfg["input_h"], cfg["input_w"], split_seed)
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
    parser = argparse.ArgumentParser(
        description="FlyingChairs2 data: write a synthetic FC2 tree or check a dataset.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--make_synthetic_fc2", metavar="DIR",
                        help="write synthetic samples in the FC2 layout")
    action.add_argument("--check", action="store_true",
                        help="check every sample (files, .flo and PNG headers, sizes, splits) and count them")
    parser.add_argument("--num", type=int, help="number of synthetic samples (with --make_synthetic_fc2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--h", type=int, default=384, help="synthetic image height")
    parser.add_argument("--w", type=int, default=512, help="synthetic image width")
    parser.add_argument("--val_fraction", type=float, default=0.2)
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
