"""The files of an optical-flow sample: Middlebury `.flo` flow, 8-bit PNG frames and KITTI's 16-bit
flow PNGs. Each can be checked from its header alone (seconds for a whole dataset) or read whole;
every problem is a DataError whose one-line message names the file.

A sample is an (img0, img1, flow) path tuple; its flow is a `.flo` (every pixel valid) or a KITTI
flow PNG (with a validity mask).
"""
import concurrent.futures
import os
import struct

import numpy as np
from tensorflow_quiet import tf

from errors import DataError


# ----------------------------------------------------------------------------- .flo

FLO_TAG = 202021.25  # Middlebury magic number; its little-endian bytes spell b"PIEH"
FLO_MAX_SIDE = 99999  # the sanity bound on width and height used by Middlebury's flowIO.cpp
FLO_HEADER_BYTES = 12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_flo_header(path, header, file_size):
    """Validate a .flo header (first 12 bytes) against the file size; return (height, width)."""
    if file_size < FLO_HEADER_BYTES:
        raise DataError(f"{path}: short .flo file: {file_size} bytes, the header alone needs 12")
    tag = np.frombuffer(header, "<f4", count=1)[0]
    if tag != np.float32(FLO_TAG):
        raise DataError(f"{path}: wrong .flo tag {header[:4]!r} (expected b'PIEH' = {FLO_TAG})")
    width, height = (int(v) for v in np.frombuffer(header, "<i4", count=2, offset=4))
    if not (1 <= width <= FLO_MAX_SIDE and 1 <= height <= FLO_MAX_SIDE):
        raise DataError(f"{path}: impossible .flo size width={width} height={height} "
                        f"(each must be 1..{FLO_MAX_SIDE})")
    expected = FLO_HEADER_BYTES + 8 * width * height
    if file_size < expected:
        raise DataError(f"{path}: short .flo file: {file_size} bytes, "
                        f"{width}x{height} flow needs {expected}")
    if file_size > expected:
        raise DataError(f"{path}: .flo file has {file_size - expected} bytes after "
                        f"the {width}x{height} flow data")
    return height, width


def flo_shape(path):
    """(height, width) of a .flo file, validated from its header and size without reading the data."""
    try:
        with open(path, "rb") as f:
            header = f.read(FLO_HEADER_BYTES)
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
    height, width = _check_flo_header(path, data[:FLO_HEADER_BYTES], len(data))
    flow = np.frombuffer(data, "<f4", count=2 * height * width, offset=FLO_HEADER_BYTES)
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


# ----------------------------------------------------------------------------- PNG frames, KITTI flow PNGs

KITTI_FLOW_OFFSET = 2 ** 15  # KITTI's 16-bit flow: u = (R - 2^15) / 64, v = (G - 2^15) / 64, valid = B > 0
KITTI_FLOW_SCALE = 64.0
_PNG_COLOUR_RGB = 2
_PNG_COLOUR_GREY = (0, 4)  # grey, grey + alpha
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every PNG ends with
_EAGER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flowio_eager")


def _eagerly(function, *args):
    """function(*args) with eager TensorFlow, wherever it is called from: a worker thread has no
    default graph, so this works inside a Session's graph too (where `.numpy()` would fail)."""
    return _EAGER.submit(function, *args).result()


def _read_bytes(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror})") from None


def png_header(path, raw):
    """(height, width, bit_depth, colour_type) from the IHDR chunk of PNG bytes `raw`, or DataError
    naming `path` if they are not a PNG."""
    if len(raw) < 33 or raw[:8] != PNG_SIGNATURE or raw[12:16] != b"IHDR":
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
        return _eagerly(lambda: tf.io.decode_png(raw, channels=3, dtype=dtype).numpy())
    except tf.errors.OpError as err:
        raise DataError(f"{path}: cannot decode PNG ({err.message.splitlines()[0]})") from None


def read_png_rgb(path):
    """An 8-bit PNG as RGB uint8 [H, W, 3] (grey or alpha converted), DataError naming the file
    if it is not an 8-bit PNG or cannot be decoded."""
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


def check_eval_sample(sample):
    """(height, width) of an (img0, img1, flow) sample from its files' headers, without decoding:
    8-bit PNG frames, a `.flo` or a 16-bit RGB KITTI flow PNG, all of one size; else DataError
    naming the file."""
    sizes = [_image_size(path, _png_file_header(path)) for path in sample[:2]]
    sizes.append(flo_shape(sample[2]) if sample[2].endswith(".flo")
                 else _kitti_flow_size(sample[2], _png_file_header(sample[2])))
    for path, size in zip(sample[1:], sizes[1:]):
        if size != sizes[0]:
            raise DataError(f"{path}: size {size[0]}x{size[1]} differs from "
                            f"{sizes[0][0]}x{sizes[0][1]} of {sample[0]}")
    return sizes[0]


def write_png(path, image):
    """Write uint8 [H, W, 3] as a PNG file (eager TensorFlow's encoder)."""
    with open(path, "wb") as f:
        f.write(_eagerly(lambda: tf.io.encode_png(image).numpy()))
