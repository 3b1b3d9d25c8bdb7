"""Synthetic FlyingChairs-style pairs with exactly known motion: a textured background and textured
objects, each with its own affine motion, rendered at pixel centres so that colours and flow are
exact. Used only when asked for or when no dataset is configured (data_fc2.open_data)."""
import dataclasses
from dataclasses import dataclass

import numpy as np

from errors import DataError


@dataclass(frozen=True)
class Scene:
    """The knobs of the synthetic scenes (config.json's `synthetic_scene`); the defaults are the
    FlyingChairs-like scenes this generator always drew, pair for pair.

    Lengths are fractions of the frame's shorter side: object_shift and background_shift, the range
    of each layer's shift (drawn in a random direction), and object_radius, of an object's semi-axes.
    num_objects: the inclusive range of objects on the background. object_degrees, background_degrees:
    the largest rotation of a layer's motion; object_log_scale, background_log_scale: the largest
    per-axis log scale. wavelength: the range of the textures' plane-wave wavelengths, cell: of their
    value-noise lattice spacing (pixels of the texture's own coordinates: smaller is finer detail).
    """

    num_objects: tuple = (3, 6)
    object_radius: tuple = (0.10, 0.25)
    object_shift: tuple = (0.02, 0.12)
    object_degrees: float = 8.0
    object_log_scale: float = 0.08
    background_shift: tuple = (0.02, 0.08)
    background_degrees: float = 2.0
    background_log_scale: float = 0.02
    wavelength: tuple = (12.0, 48.0)
    cell: tuple = (4.0, 10.0)

    @classmethod
    def of(cls, knobs):
        """The Scene of a dict of knobs (config.json's synthetic_scene); DataError naming a bad one."""
        knobs = dict(knobs or {})
        unknown = sorted(set(knobs) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise DataError(f"synthetic_scene: unknown knob '{unknown[0]}'")
        scene = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in knobs.items()})
        for name in ("num_objects", "object_radius", "object_shift", "background_shift", "wavelength", "cell"):
            low, high = getattr(scene, name)
            if not 0 <= low <= high or (name in ("wavelength", "cell", "object_radius") and low <= 0):
                raise DataError(f"synthetic_scene: knob '{name}' must be a range [low, high] with "
                                f"0 {'<' if name in ('wavelength', 'cell', 'object_radius') else '<='} low <= high")
        if scene.num_objects != tuple(int(v) for v in scene.num_objects):
            raise DataError("synthetic_scene: knob 'num_objects' must be whole numbers")
        return scene


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


def _random_texture(rng, lo, hi, scene):
    """A random texture whose noise lattice covers the canonical box [lo, hi] (x, y)."""
    n_waves = 4
    wavelengths = rng.uniform(*scene.wavelength, n_waves)
    angles = rng.uniform(0.0, 2 * np.pi, n_waves)
    vectors = (2 * np.pi / wavelengths)[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    cell = rng.uniform(*scene.cell)
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


def _random_shape(rng, size, scene):
    radii = rng.uniform(*scene.object_radius, 2) * size
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


def _random_scene(rng, h, w, scene):
    """A background plus `scene.num_objects` objects, each with its own texture, shape and affine motion."""
    size = min(h, w)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    margin = 0.5 * max(h, w)  # background canonical box must cover frame 1 mapped back too
    layers = [_Layer(
        texture=_random_texture(rng, [-margin, -margin], [w + margin, h + margin], scene),
        shape=None,
        place=(np.eye(2), np.zeros(2)),
        motion=_random_motion(rng, centre, size, scene.background_degrees, scene.background_log_scale,
                              scene.background_shift),
    )]
    for _ in range(int(rng.integers(scene.num_objects[0], scene.num_objects[1] + 1))):
        shape = _random_shape(rng, size, scene)
        reach = shape.radii.max() + 1.0
        position = rng.uniform(0.1, 0.9, 2) * [w - 1, h - 1]
        layers.append(_Layer(
            texture=_random_texture(rng, [-reach, -reach], [reach, reach], scene),
            shape=shape,
            place=(_rotation(rng.uniform(0.0, 2 * np.pi)), position),
            motion=_random_motion(rng, position, size, scene.object_degrees, scene.object_log_scale,
                                  scene.object_shift),
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


def check_seed(seed):
    """DataError unless `seed` is a non-negative integer."""
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise DataError(f"synthetic seed must be a non-negative integer, got {seed!r}")


def check_image_size(h, w, what):
    """DataError unless h and w are positive integers."""
    if not (isinstance(h, (int, np.integer)) and isinstance(w, (int, np.integer)) and h >= 1 and w >= 1):
        raise DataError(f"{what} size must be positive integers, got h={h!r} w={w!r}")


def render_synthetic_scene(rng, h, w, scene=Scene()):
    """Render one random FlyingChairs-style scene (its knobs: `scene`).

    Returns dict(img0, img1 uint8 [h, w, 3], flow float32 [h, w, 2] (exact forward flow of
    every frame-0 pixel), layers0, layers1 int64 [h, w]: index of the topmost layer at each
    pixel, 0 = background). The layer maps let callers find occluded pixels.
    """
    check_image_size(h, w, "synthetic image")
    layers = _random_scene(rng, h, w, scene)
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


def make_synthetic_pair(rng, h, w, scene=Scene()):
    """One synthetic pair drawn from numpy Generator `rng`:
    (img0, img1 uint8 [h, w, 3], flow float32 [h, w, 2])."""
    rendered = render_synthetic_scene(rng, h, w, scene)
    return rendered["img0"], rendered["img1"], rendered["flow"]


def make_synthetic_arrays(num, h, w, seed, scene=Scene()):
    """`num` synthetic pairs from np.random.default_rng(seed), stacked:
    dict(img0=[N, h, w, 3] uint8, img1=[N, h, w, 3] uint8, flow=[N, h, w, 2] float32)."""
    if not (isinstance(num, (int, np.integer)) and num >= 1):
        raise DataError(f"number of synthetic samples must be a positive integer, got {num!r}")
    check_image_size(h, w, "synthetic image")
    check_seed(seed)
    rng = np.random.default_rng(seed)
    arrays = dict(img0=np.empty((num, h, w, 3), np.uint8), img1=np.empty((num, h, w, 3), np.uint8),
                  flow=np.empty((num, h, w, 2), np.float32))
    for i in range(num):
        arrays["img0"][i], arrays["img1"][i], arrays["flow"][i] = make_synthetic_pair(rng, h, w, scene)
    return arrays
