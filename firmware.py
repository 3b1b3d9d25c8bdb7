"""What a microcontroller computes, and what a board port needs.

The board runs INT8: every operator the NPU does not take runs on the Cortex-M with TensorFlow Lite
for Microcontrollers (TFLM) and its kernels. `tflm_check` runs an INT8 model (before the NPU
compiler) with TFLM's own interpreter (the `tflite-micro` package: its reference kernels) and
compares its int8 outputs with TensorFlow Lite's, in output quantisation steps: against the
interpreter the EPE was scored with (optimised kernels, which round differently) and against its
reference kernels (what TFLM's reference kernels should reproduce bit for bit). `write_files`
writes what firmware needs: a reference input/output pair, the compiled model as a C array, and a
README.txt.
"""
import os
import re
import sys
import tempfile

import numpy as np

import atomic_files
import convert
from errors import DeployError


def int8_io(model_path):
    """(input, output) quantisation {scale, zero_point, shape} of an INT8 TFLite model."""
    interpreter = convert.tflite_interpreter(model_path)
    details = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return tuple({"scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1]),
                  "shape": [int(v) for v in d["shape"]]} for d in details)


def quantized_inputs(model_path, images):
    """Each frame pair of `images` [N, h, w, 6] quantised as the model's input expects: int8 [1, h, w, 6]."""
    quant = int8_io(model_path)[0]
    return [convert.quantize(image[None], quant["scale"], quant["zero_point"]) for image in images]


def tflite_int8(model_path, inputs, reference=False):
    """TensorFlow Lite's raw int8 outputs for int8 `inputs`: its default interpreter, or with
    `reference` its reference kernels (OpResolverType.BUILTIN_REF)."""
    interpreter = convert.tflite_interpreter(model_path, reference=reference)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for x in inputs:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"]).copy())
    return outputs


def _captured_stderr(action):
    """(action(), what the C side wrote to file descriptor 2 meanwhile): TFLM reports there only."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            result, failure = action(), None
        except (RuntimeError, ValueError) as err:
            result, failure = None, err
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        text = held.read().decode(errors="replace")
    if failure is not None:
        said = [line.strip() for line in text.splitlines() if line.strip()]
        raise DeployError(f"TFLM cannot run the model: {failure}" + (f" ({said[0]})" if said else ""))
    return result, text


def tflm_int8(model_path, inputs, arena_bytes=None):
    """(TFLM's int8 outputs for int8 `inputs`, the arena it used in bytes). DeployError (one line)
    when the tflite-micro package is missing or TFLM cannot run the model."""
    try:
        from tflite_micro import runtime
    except ImportError as err:
        raise DeployError(f"TFLM check skipped: the tflite-micro package is missing ({err})") from None
    with open(model_path, "rb") as f:
        model = f.read()
    interpreter, _ = _captured_stderr(lambda: runtime.Interpreter.from_bytes(model, arena_size=arena_bytes))
    outputs = []
    for x in inputs:
        interpreter.set_input(x, 0)
        _captured_stderr(interpreter.invoke)
        outputs.append(interpreter.get_output(0))
    _, allocations = _captured_stderr(interpreter.print_allocations)
    used = re.search(r"Arena allocation total (\d+) bytes", allocations)
    return outputs, int(used.group(1)) if used else None


def step_difference(a, b):
    """{max_step_diff, share_differing} of two lists of int8 outputs, in quantisation steps."""
    diff = np.concatenate([np.abs(x.astype(np.int32) - y.astype(np.int32)).ravel() for x, y in zip(a, b)])
    return {"max_step_diff": int(diff.max()), "share_differing": float(np.mean(diff > 0))}


def tflm_check(model_path, val_batches, count):
    """TFLM against TensorFlow Lite on the first `count` validation samples of `val_batches` (frames
    at the model's size, true flow at the frame's): int8 outputs compared in output quantisation
    steps with TFLite's interpreter and its reference kernels, the EPE of TFLM's outputs (and of
    TFLite's on the same samples), the arena TFLM used; and the first sample's input and TFLM
    output (what write_files stores). DeployError when TFLM is missing or cannot run the model."""
    images = np.concatenate([b[0] for b in val_batches])[:count]
    subset, left = [], count
    for images_b, flows, valid in val_batches:
        if left > 0:
            subset.append((images_b[:left], flows[:left], valid[:left]))
            left -= len(images_b)
    inputs = quantized_inputs(model_path, images)
    tflm, arena = tflm_int8(model_path, inputs)
    out = int8_io(model_path)[1]

    def epe(outputs):
        flows = convert.dequantize(np.concatenate(outputs), out["scale"], out["zero_point"])
        sizes = np.cumsum([len(b[0]) for b in subset])[:-1]
        return convert.metrics_of(np.split(flows, sizes), subset)["epe"]

    default, reference = tflite_int8(model_path, inputs), tflite_int8(model_path, inputs, reference=True)
    result = {"samples": len(inputs), "arena_bytes": arena, "epe": epe(tflm), "tflite_epe_same_samples": epe(default),
              "vs_tflite": step_difference(tflm, default),
              "vs_tflite_reference_kernels": step_difference(tflm, reference)}
    result.update(result["vs_tflite"])
    return result, inputs[0], tflm[0]


def c_array(data, name):
    """(C++ source, header) embedding `data` as a 16-byte aligned array and its length, as TFLM
    firmware embeds a model (alignas(16) const unsigned char <name>[], unsigned int <name>_len)."""
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 12]) for i in range(0, len(data), 12)]
    source = (f'#include "{name}.h"\n\nalignas(16) const unsigned char {name}[] = {{\n    '
              + ",\n    ".join(rows) + f"\n}};\nconst unsigned int {name}_len = {len(data)};\n")
    header = (f"#ifndef {name.upper()}_H_\n#define {name.upper()}_H_\n\n"
              f"extern const unsigned char {name}[];  // {len(data)} bytes, 16-byte aligned\n"
              f"extern const unsigned int {name}_len;\n\n#endif  // {name.upper()}_H_\n")
    return source, header


def readme_text(report, quant):
    """README.txt of a deployment folder: sizes, layout, quantisation, turning the output into flow."""
    (h, w), (qi, qo) = report["input_size"], quant
    tflm = report.get("tflm") or {}
    return f"""EdgeFlowNAS deployment of arch {report['arch']} for {report['target']['name']}

Input: int8 [1, {h}, {w}, 6], NHWC: frame 0 RGB then frame 1 RGB, each pixel x in 0..255 first scaled
to x / 127.5 - 1, then quantised: q = clamp(round(x / {qi['scale']:.9g}) + ({qi['zero_point']}), -128, 127).
Output: int8 [1, {h}, {w}, 2], the flow (u right, v down) in pixels of the {h}x{w} input:
flow = (q - ({qo['zero_point']})) * {qo['scale']:.9g}. To use it at the camera's resolution H x W,
resize it bilinearly to H x W and multiply u by W/{w} and v by H/{h}.

Files: model_vela.cc / model_vela.h (the Vela-compiled model as a 16-byte aligned C array and its length),
reference_input.npy and reference_output.npy (one validation pair quantised as above and TFLM's int8
output for it: a port must reproduce it bit for bit), model_int8.tflite (before Vela), vela/ (Vela's output).

Memory: Vela plans {report['sram_kib']:.1f} KiB of SRAM for the NPU's tensors; TFLM run entirely on a
Cortex-M (no NPU) needed an arena of {tflm.get('arena_bytes') or 'n/a'} bytes. Flash: {report['flash_kib']:.1f} KiB.
Vela's estimate: {report['fps']:.2f} inferences/s on the NPU, {report['cpu_ops']} operators on the CPU.
"""


def write_files(folder, report, compiled_model, reference):
    """The firmware files of a deployment folder (holding model_int8.tflite): model_vela.cc/.h from
    the compiled model, the reference input/output pair (int8 .npy, when the TFLM check ran) and
    README.txt."""
    with open(compiled_model, "rb") as f:
        source, header = c_array(f.read(), "model_vela")
    atomic_files.write_atomic(os.path.join(folder, "model_vela.cc"), source)
    atomic_files.write_atomic(os.path.join(folder, "model_vela.h"), header)
    if reference is not None:
        for name, array in zip(("reference_input", "reference_output"), reference):
            buffer = tempfile.SpooledTemporaryFile()
            np.save(buffer, array)
            buffer.seek(0)
            atomic_files.write_atomic(os.path.join(folder, f"{name}.npy"), buffer.read())
    quant = int8_io(os.path.join(folder, "model_int8.tflite"))
    atomic_files.write_atomic(os.path.join(folder, "README.txt"), readme_text(report, quant))
