"""Deploy one subnet of a trained supernet: recalibrate its BN statistics (as evaluate.py does), build the
static inference graph of that arch alone, convert it to TFLite FP32 and full-INT8, check that both still
compute the same flow, time them on this CPU and compile the INT8 model for an Arm Ethos-U NPU with Vela.

    python export.py --experiment_name demo --arch 0,0,0,0,0,0,0,0,0
    python export.py --experiment_name demo --arch 2,2,2,2,2,2,2,2,2 --input_h 64 --input_w 96
    python export.py --experiment_name demo --latency_table      # per-layer Ethos-U latency table for search.py

Writes `<run>/export_<code without commas>/`: model_fp32.tflite, model_int8.tflite, vela/ (the compiled
model and Vela's summary and per-layer CSVs) and export_report.json. `--latency_table` writes
`<run>/latency_<accelerator>_<h>x<w>.json` (see load_latency_table and predict_fps).
"""
import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import devices  # before tensorflow: quietens its start-up (see devices.py)
import tensorflow as tf

import ckpt
import data_fc2
import evaluate
import supernet

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")
DEFAULT_ACCELERATOR = "ethos-u55-64"
ACCELERATORS = tuple(f"ethos-u55-{n}" for n in (32, 64, 128, 256)) + ("ethos-u65-256", "ethos-u65-512") + tuple(
    f"ethos-u85-{n}" for n in (128, 256, 512, 1024, 2048))  # Vela's --accelerator-config choices
DEFAULT_SYSTEM_CONFIG = "Ethos_U55_High_End_Embedded"
DEFAULT_MEMORY_MODE = "Shared_Sram"
VELA_CONFIG_FILE = "Arm/vela.ini"  # shipped inside the ethos-u-vela package
TABLE_FORMAT = "edgeflownas-ethos-u-latency-table/1"
TABLE_ARCHS = tuple((o,) * len(supernet.BLOCKS) for o in range(supernet.NUM_OPTIONS))  # a fair cycle
FIXED = "fixed"  # the table key of the layers every subnet has
CONTROL_FLOW_OPS = ("Case", "StatelessCase", "If", "StatelessIf", "While", "StatelessWhile")


class ExportError(Exception):
    """A missing tool, a failed conversion or compile, or a bad latency table; the message says which."""


# ----------------------------------------------------------------------------- run and data

def deployment_batches(cfg, h, w):
    """(recal, val) batches at the run's input size, for recalibration exactly as evaluate.py does,
    and (calibration, val) batches of the same kind at the export size h x w (the same batches when
    the sizes agree). Calibration batches are real training crops, never zeros or noise."""
    data = data_fc2.open_data(cfg)  # announces synthetic data itself
    run_batches = evaluate.scoring_batches(cfg, data)
    if (h, w) == (cfg["input_h"], cfg["input_w"]):
        return run_batches, run_batches, data["data_source"]
    export_cfg = dict(cfg, input_h=h, input_w=w)
    return run_batches, evaluate.scoring_batches(export_cfg, data_fc2.open_data(export_cfg)), data["data_source"]


def split_batch(batch):
    """(images, flows, valid or None) of a validation batch (a third element is a validity mask)."""
    return batch[0], batch[1], (batch[2] if len(batch) > 2 else None)


# ----------------------------------------------------------------------------- recalibration

@contextlib.contextmanager
def recalibration_session(run_dir, kind, cfg, recal_batches, val_batches):
    """evaluate.py's scorer graph at the run's input size holding checkpoint `kind`.

    Yields recalibrate(arch, names) -> (metrics, {variable name: value}): evaluate.score_subnet
    recalibrates the subnet's BN statistics into the supernet's variables and scores it; the values
    of the variables `names` are then read out of the session for the static graph.
    """
    h, w = cfg["input_h"], cfg["input_w"]
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.INPUT_CHANNELS], "images")
        flows = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.FLOW_CHANNELS], "flows")
        scorer = evaluate.build_scorer(images, flows)
        variables = {v.op.name: v for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)}
        saver = tf.compat.v1.train.Saver(list(variables.values()))
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = ckpt.restore(sess, saver, run_dir, kind, h, w)

        def recalibrate(arch, names):
            metrics = evaluate.score_subnet(sess, scorer, arch, recal_batches, val_batches)
            missing = [n for n in names if n not in variables]
            if missing:
                raise ExportError(f"the supernet graph has no variable {missing[0]} ({len(missing)} missing)")
            return metrics, sess.run({n: variables[n] for n in names})

        recalibrate.meta = meta
        yield recalibrate


# ----------------------------------------------------------------------------- static graph

def build_static_graph(arch, h, w):
    """The inference graph of `arch` alone at h x w, batch 1: (graph, images, flow), no switch_case."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [1, h, w, supernet.INPUT_CHANNELS], "images")
        flow = tf.identity(supernet.build_flows(images, arch, mode="eval")[-1], name="flow")
    return graph, images, flow


def variable_names(graph):
    """Op names of a graph's global variables (the names the supernet's checkpoint uses)."""
    return [v.op.name for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)]


def load_values(sess, graph, values):
    """Initialise every variable of `graph` in `sess` from {name: value} by feeding its initial value."""
    for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES):
        sess.run(v.initializer, {v.initial_value: values[v.op.name]})


def graph_check(graph, arch, h, w):
    """What the exported graph holds against what `arch` needs: control-flow ops (must be none),
    convolutions and parameters (must equal supernet.layer_table / count_params); ok is the verdict."""
    ops = graph.get_operations()
    check = {"control_flow_ops": sorted({op.type for op in ops if op.type in CONTROL_FLOW_OPS}),
             "conv_ops": sum(op.type == "Conv2D" for op in ops),
             "expected_conv_ops": len(supernet.layer_table(arch, h, w)),
             "params": supernet.graph_param_count(graph), "expected_params": supernet.count_params(arch, h, w)}
    check["ok"] = (not check["control_flow_ops"] and check["conv_ops"] == check["expected_conv_ops"]
                   and check["params"] == check["expected_params"])
    return check


def convert(sess, images, flow, calibration=None):
    """TFLite flatbuffer of the session's graph: FP32, or full INT8 (int8 input and output) calibrated
    on the images of `calibration` batches when given."""
    converter = tf.compat.v1.lite.TFLiteConverter.from_session(sess, [images], [flow])
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([sample[None].astype(np.float32)]
                                                    for batch in calibration for sample in batch[0])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        return converter.convert()
    except Exception as err:  # the converter raises many types; its first line says what failed
        raise ExportError(f"TFLite conversion failed: {str(err).strip().splitlines()[0]}") from None


def write_bytes_atomic(path, content):
    """Write bytes via a temp file and rename, so a killed export never leaves half a model."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(content)
    os.replace(tmp, path)
    return path


def static_models(values, arch, h, w, calibration, val_batches, with_fp32=True):
    """Build the static graph of `arch` at h x w from recalibrated `values` and convert it.

    Returns dict(check, int8, and with `with_fp32`: fp32 and tf_outputs, the static graph's flow
    for every validation sample, batch by batch)."""
    graph, images, flow = build_static_graph(arch, h, w)
    result = {"check": graph_check(graph, arch, h, w)}
    with tf.compat.v1.Session(graph=graph) as sess:
        load_values(sess, graph, values)
        if with_fp32:
            result["tf_outputs"] = [np.concatenate([sess.run(flow, {images: s[None]}) for s in split_batch(b)[0]])
                                    for b in val_batches]
            result["fp32"] = convert(sess, images, flow)
        result["int8"] = convert(sess, images, flow, calibration)
    return result


# ----------------------------------------------------------------------------- TFLite on the CPU

def tflite_predictor(model_path, num_threads=None):
    """predict(images [1, H, W, 6] float32) -> flow [1, H, W, 2] float32 with TensorFlow's TFLite
    interpreter; an int8 model's input is quantised and its output dequantised with its own scale
    and zero point."""
    with warnings.catch_warnings():  # its deprecation notice points at ai-edge-litert, same interpreter
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=model_path, num_threads=num_threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def predict(images):
        if inp["dtype"] == np.int8:
            images = quantize(images, *inp["quantization"])
        interpreter.set_tensor(inp["index"], images.astype(inp["dtype"]))
        interpreter.invoke()
        result = interpreter.get_tensor(out["index"])
        return dequantize(result, *out["quantization"]) if out["dtype"] == np.int8 else result

    predict.interpreter = interpreter
    return predict


def quantize(x, scale, zero_point):
    """float -> int8 with a TFLite tensor's scale and zero point (round to nearest, saturate)."""
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)


def dequantize(q, scale, zero_point):
    """int8 -> float with a TFLite tensor's scale and zero point."""
    return (q.astype(np.float32) - zero_point) * scale


def predictions(predict, batches):
    """`predict` run on every validation sample one at a time, stacked batch by batch."""
    return [np.concatenate([predict(s[None].astype(np.float32)) for s in split_batch(b)[0]]) for b in batches]


def epe_of(outputs, batches):
    """EPE of predicted flows against the batches' labels (evaluate.py's metric definition)."""
    totals = {}
    for pred, batch in zip(outputs, batches):
        _, flows, valid = split_batch(batch)
        sums = evaluate.flow_metric_sums(tf.constant(pred, tf.float32), tf.constant(flows, tf.float32),
                                         None if valid is None else tf.constant(valid))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return float(evaluate.metrics_from_sums(totals)["epe"])


def cpu_latency_ms(model_path, num_threads, sample, warmup, repeats):
    """Median wall-clock ms of one inference on this CPU after `warmup` untimed runs."""
    predict = tflite_predictor(model_path, num_threads)
    predict(sample)  # sets the input; the timed runs below are the interpreter's alone
    for _ in range(warmup):
        predict.interpreter.invoke()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict.interpreter.invoke()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


# ----------------------------------------------------------------------------- Vela

def find_vela(path=None):
    """The Vela executable: `path` if given, else the one installed beside this Python, else on PATH."""
    candidate = path or os.path.join(os.path.dirname(sys.executable), "vela")
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    if path is None and shutil.which("vela"):
        return shutil.which("vela")
    raise ExportError(f"Vela not found at {candidate}: install ethos-u-vela (it is in requirements.txt) "
                      "or pass --vela PATH")


def vela_version(vela):
    """Vela's version string (what compiled the models), or 'unknown'."""
    proc = subprocess.run([vela, "--version"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def run_vela(vela, model_path, out_dir, target):
    """Compile an INT8 TFLite model for the Ethos-U `target` (accelerator_config, system_config,
    memory_mode) into out_dir; returns (summary fields, per-layer rows of --verbose-performance)."""
    command = [vela, model_path, "--output-dir", out_dir, "--config", VELA_CONFIG_FILE,
               "--accelerator-config", target["accelerator_config"], "--system-config", target["system_config"],
               "--memory-mode", target["memory_mode"], "--verbose-performance", "--show-cpu-operations"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True)
    except OSError as err:
        raise ExportError(f"cannot run Vela {vela}: {err}") from None
    if proc.returncode:
        lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        raise ExportError(f"Vela failed on {model_path}: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    stem = os.path.splitext(os.path.basename(model_path))[0]
    summary = parse_vela_summary(os.path.join(out_dir, f"{stem}_summary_{target['system_config']}.csv"))
    summary.update(parse_operator_counts(proc.stdout))
    summary["compiled_model"] = os.path.join(out_dir, f"{stem}_vela.tflite")
    return summary, read_csv_rows(os.path.join(out_dir, f"{stem}_per-layer.csv"), "Vela per-layer report")


def read_csv_rows(path, what):
    """The rows of a CSV file as dicts; ExportError naming `what` and the path if it cannot be read."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError as err:
        raise ExportError(f"{what} unreadable: {path}: {err.strerror}") from None


def parse_vela_summary(path):
    """The figures of Vela's summary CSV: clock, inference time and FPS, SRAM and off-chip flash
    used (KiB), cycles, MACs, and the accelerator, system config and memory mode it compiled for."""
    rows = read_csv_rows(path, "Vela summary")
    if len(rows) != 1:
        raise ExportError(f"Vela summary {path} has {len(rows)} rows, expected 1")
    row = rows[0]
    try:
        return {"accelerator_config": row["accelerator_configuration"], "system_config": row["system_config"],
                "memory_mode": row["memory_mode"], "clock_hz": float(row["core_clock"]),
                "inference_ms": float(row["inference_time"]) * 1e3, "fps": float(row["inferences_per_second"]),
                "sram_used_kib": float(row["sram_memory_used"]),
                "off_chip_flash_used_kib": float(row["off_chip_flash_memory_used"]),
                "cycles_total": float(row["cycles_total"]), "cycles_npu": float(row["cycles_npu"]),
                "macs": int(float(row["nn_macs"]))}
    except (KeyError, ValueError) as err:
        raise ExportError(f"Vela summary {path}: field {err} missing or not a number") from None


def parse_operator_counts(stdout):
    """NPU and CPU operator counts from Vela's printed summary, with the CPU operators' descriptions
    (type = tensor name) as --show-cpu-operations lists them."""
    counts = {kind: re.search(rf"^{kind} operators = (\d+)", stdout, re.M) for kind in ("NPU", "CPU")}
    if not all(counts.values()):
        raise ExportError("Vela printed no NPU/CPU operator counts")
    cpu_ops = [m.group(1) for m in re.finditer(r"^\s+CPU: (.+?)(?: \(outputs .*)?$", stdout, re.M)]
    return {"npu_operators": int(counts["NPU"].group(1)), "cpu_operators": int(counts["CPU"].group(1)),
            "cpu_operator_names": cpu_ops}


# ----------------------------------------------------------------------------- per-layer latency table

def conv_block(name):
    """The choice block a conv op or TFLite tensor name belongs to ("EB0_rb2_conv1" -> EB0,
    "H1_k5_conv" -> H1), FIXED for the layers every subnet has (E0, Down1, Up2, ...), None if not a conv."""
    match = re.search(r"([A-Za-z0-9]+)_(?:rb\d+_conv\d|k\d+_conv|conv)", name.rsplit("/", 1)[-1])
    if not match:
        return None
    return match.group(1) if match.group(1) in supernet.BLOCKS else FIXED


def op_blocks(graph):
    """{op name: block} for a static graph: the block of the latest-built convolution upstream of each op.

    A residual add or a resize is thus charged to the block that decides the layer it reads (the
    resize after DB0 to DB0, the flow accumulations to H1Out and H2Out), the same block in every subnet.
    """
    latest = {}
    for index, op in enumerate(graph.get_operations()):  # creation order is topological
        if op.type == "Conv2D":
            latest[op.name] = (index, op.name)
        else:
            upstream = [latest[t.op.name] for t in op.inputs if t.op.name in latest]
            if upstream:
                latest[op.name] = max(upstream)
    return {name: conv_block(conv) for name, (_, conv) in latest.items()}


def block_cycles(per_layer, blocks_of_ops):
    """Vela's per-layer cycles summed by block: ({FIXED or block: cycles}, unattributed rows). A row is
    named by its TFLite tensors ("supernet/Relu_3;supernet/add"): the first one that is an op of the
    static graph, else the first conv name in it, gives its block; an unknown row counts as FIXED."""
    totals, unattributed = {FIXED: 0.0, **{b: 0.0 for b in supernet.BLOCKS}}, 0
    for row in per_layer:
        tokens = [t.strip() for t in row["Name"].split(";")]
        known = [blocks_of_ops[t] for t in tokens if blocks_of_ops.get(t)]
        named = [conv_block(t) for t in tokens if conv_block(t)]
        block = (known + named + [None])[0]
        unattributed += block is None
        totals[block or FIXED] += float(row["Op Cycles"])
    return totals, unattributed


def make_latency_table(measurements, target, h, w):
    """The table from compiled subnets that together use every option of every block (a fair cycle):
    fixed cycles averaged over them, each (block, option) the mean over the subnets that chose it."""
    table = {"format": TABLE_FORMAT, **{k: target[k] for k in ("accelerator_config", "system_config", "memory_mode")},
             "clock_hz": measurements[0]["vela"]["clock_hz"], "input_size": [h, w],
             "source_archs": [supernet.format_arch(m["arch"]) for m in measurements],
             "fixed_cycles": float(np.mean([m["cycles"][FIXED] for m in measurements])), "block_cycles": {},
             "unattributed_rows": int(sum(m["unattributed"] for m in measurements))}
    for i, block in enumerate(supernet.BLOCKS):
        per_option = [[m["cycles"][block] for m in measurements if m["arch"][i] == o]
                      for o in range(supernet.NUM_OPTIONS)]
        if not all(per_option):
            raise ExportError(f"the table's subnets never choose every option of {block}")
        table["block_cycles"][block] = [float(np.mean(c)) for c in per_option]
    return table


def load_latency_table(path):
    """Read and check a latency table written by `export.py --latency_table`; ValueError naming the file.

    JSON: format, accelerator_config, system_config, memory_mode, clock_hz, input_size [h, w],
    fixed_cycles, block_cycles {block: [cycles of option 0, 1, 2]}, and the check against full compiles.
    """
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"latency table {path} unreadable: {err}") from None
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        raise ValueError(f"latency table {path} is not a {TABLE_FORMAT} file")
    problems = [k for k in ("accelerator_config", "system_config", "memory_mode") if not isinstance(table.get(k), str)]
    problems += [k for k in ("clock_hz", "fixed_cycles") if not is_number(table.get(k)) or table[k] < 0]
    size = table.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        problems.append("input_size")
    cycles = table.get("block_cycles")
    for block in supernet.BLOCKS:
        row = cycles.get(block) if isinstance(cycles, dict) else None
        valid = isinstance(row, list) and len(row) == supernet.NUM_OPTIONS
        if not (valid and all(is_number(c) and c >= 0 for c in row)):
            problems.append(f"block_cycles.{block}")
    if problems:
        raise ValueError(f"latency table {path}: field {problems[0]} missing or invalid")
    return table


def is_number(value):
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def predict_cycles(table, arch):
    """Predicted Ethos-U cycles of one inference of `arch` (a tuple of 9 ints) from a latency table."""
    arch = supernet.validate_arch(arch)
    return table["fixed_cycles"] + sum(table["block_cycles"][b][o] for b, o in zip(supernet.BLOCKS, arch))


def predict_fps(table, arch):
    """Predicted Ethos-U inferences per second of `arch` (a tuple of 9 ints) from a latency table."""
    return table["clock_hz"] / predict_cycles(table, arch)


# ----------------------------------------------------------------------------- one subnet

def recalibrated_subnet(recalibrate, arch, h, w):
    """(metrics of the recalibrated subnet at the run's size, {name: value} of its static graph's variables)."""
    return recalibrate(arch, variable_names(build_static_graph(arch, h, w)[0]))


def compile_int8(recalibrate, arch, h, w, calibration, vela, target, work_dir):
    """Recalibrate, convert to INT8 and compile one subnet with Vela in work_dir; returns dict(arch,
    epe, vela summary, cycles by block, unattributed rows). What the latency table is made of."""
    start = time.time()
    metrics, values = recalibrated_subnet(recalibrate, arch, h, w)
    models = static_models(values, arch, h, w, calibration, [], with_fp32=False)
    name = "m" + supernet.format_arch(arch).replace(",", "")
    model_path = write_bytes_atomic(os.path.join(work_dir, f"{name}.tflite"), models["int8"])
    summary, per_layer = run_vela(vela, model_path, os.path.join(work_dir, name), target)
    cycles, unattributed = block_cycles(per_layer, op_blocks(build_static_graph(arch, h, w)[0]))
    print(f"  {supernet.format_arch(arch)}  EPE {metrics['epe']:.4f}  Vela {summary['fps']:.2f} FPS "
          f"({summary['cycles_total']:.0f} cycles)  {time.time() - start:.1f}s")
    return {"arch": arch, "epe": metrics["epe"], "vela": summary, "cycles": cycles, "unattributed": unattributed}


def agreement(paths, tf_outputs, batches):
    """FP32 TFLite against the TensorFlow static graph (max abs difference of the full-resolution
    flow), INT8 against it (mean and max abs difference, px) and the EPE of TensorFlow, FP32 and INT8
    on the same validation batches."""
    fp32 = predictions(tflite_predictor(paths["fp32"]), batches)
    int8 = predictions(tflite_predictor(paths["int8"]), batches)
    epe = {"tf": epe_of(tf_outputs, batches), "fp32": epe_of(fp32, batches), "int8": epe_of(int8, batches)}
    int8_error = np.concatenate([np.abs(a - b).ravel() for a, b in zip(int8, tf_outputs)])
    return {"fp32_max_abs_diff": float(max(np.abs(a - b).max() for a, b in zip(fp32, tf_outputs))),
            "int8_mean_abs_diff": float(int8_error.mean()), "int8_max_abs_diff": float(int8_error.max()),
            "epe_tf": epe["tf"], "epe_fp32": epe["fp32"], "epe_int8": epe["int8"],
            "int8_epe_loss": epe["int8"] - epe["tf"], "val_samples": int(sum(len(b[0]) for b in batches))}


def cpu_timings(paths, sample, warmup, repeats):
    """Median ms of the FP32 and INT8 models on this CPU, 1 thread and all threads."""
    threads = os.cpu_count() or 1
    timings = {"threads_all": threads, "warmup": warmup, "repeats": repeats}
    for kind, path in paths.items():
        timings[f"{kind}_1_thread_ms"] = cpu_latency_ms(path, 1, sample, warmup, repeats)
        timings[f"{kind}_all_threads_ms"] = cpu_latency_ms(path, threads, sample, warmup, repeats)
    return timings


def export_subnet(args, run_dir, cfg, vela, target, hardware):
    """Recalibrate, build, convert, check, time and compile one subnet; writes and returns the report."""
    arch, (h, w) = supernet.parse_arch(args.arch), export_size(args, cfg)
    (recal, val), (calibration, val_export), data_source = deployment_batches(cfg, h, w)
    with recalibration_session(run_dir, args.checkpoint_type, cfg, recal, val) as recalibrate:
        metrics, values = recalibrated_subnet(recalibrate, arch, h, w)
    models = static_models(values, arch, h, w, calibration, val_export)
    if not models["check"]["ok"]:
        raise ExportError(f"the static graph of {args.arch} is not that subnet alone: {models['check']}")
    out_dir = export_dir(run_dir, arch, (h, w), (cfg["input_h"], cfg["input_w"]))
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: write_bytes_atomic(os.path.join(out_dir, f"model_{kind}.tflite"), models[kind])
             for kind in ("fp32", "int8")}
    sample = split_batch(val_export[0])[0][:1].astype(np.float32)
    vela_summary, _ = run_vela(vela, paths["int8"], os.path.join(out_dir, "vela"), target)
    report = {"arch": supernet.format_arch(arch), "run_dir": run_dir, "checkpoint": recalibrate.meta["prefix"],
              "checkpoint_type": args.checkpoint_type, "data_source": data_source, "input_size": [h, w],
              "run_input_size": [cfg["input_h"], cfg["input_w"]], "params": supernet.count_params(arch, h, w),
              "gmacs": supernet.count_macs(arch, h, w) / 1e9, "graph_check": models["check"],
              "recalibration": {"batches": len(recal), "epe_at_run_size": metrics["epe"]},
              "sizes_bytes": {k: os.path.getsize(p) for k, p in paths.items()},
              "agreement": agreement(paths, models["tf_outputs"], val_export),
              "cpu": cpu_timings(paths, sample, args.warmup, args.repeats),
              "vela": dict(vela_summary, version=vela_version(vela)), "devices": hardware}
    ckpt.write_json_atomic(os.path.join(out_dir, "export_report.json"), report)
    print_report(report, os.path.join(out_dir, "export_report.json"))
    return report


def export_dir(run_dir, arch, size, run_size):
    """<run>/export_<code without commas>, with _<h>x<w> appended when the export size is not the run's."""
    name = "export_" + supernet.format_arch(arch).replace(",", "")
    return os.path.join(run_dir, name if size == run_size else f"{name}_{size[0]}x{size[1]}")


def print_report(report, path):
    """The export's figures, then one Markdown row for the README's table."""
    a, c, v, s = report["agreement"], report["cpu"], report["vela"], report["sizes_bytes"]
    h, w = report["input_size"]
    print(f"arch {report['arch']} at {h}x{w}: {report['params']:,} params, "
          f"{report['gmacs']:.3f} GMAC; graph check {'ok' if report['graph_check']['ok'] else 'FAILED'}")
    print(f"  FP32 TFLite vs TensorFlow: max abs diff {a['fp32_max_abs_diff']:.2e} over {a['val_samples']} samples")
    print(f"  EPE  TensorFlow {a['epe_tf']:.4f}  FP32 {a['epe_fp32']:.4f}  INT8 {a['epe_int8']:.4f} "
          f"(INT8 loss {a['int8_epe_loss']:+.4f}); INT8 vs TensorFlow flow: mean abs diff "
          f"{a['int8_mean_abs_diff']:.4f} px, max {a['int8_max_abs_diff']:.3f} px")
    print(f"  CPU ms (1 / {c['threads_all']} threads): "
          f"FP32 {c['fp32_1_thread_ms']:.2f} / {c['fp32_all_threads_ms']:.2f}"
          f"  INT8 {c['int8_1_thread_ms']:.2f} / {c['int8_all_threads_ms']:.2f}")
    cpu_ops = ", ".join(v["cpu_operator_names"]) or "none"
    print(f"  Vela {v['accelerator_config']} {v['system_config']} {v['memory_mode']}: {v['inference_ms']:.2f} ms, "
          f"{v['fps']:.2f} FPS, SRAM {v['sram_used_kib']:.1f} KiB, "
          f"off-chip flash {v['off_chip_flash_used_kib']:.1f} KiB, "
          f"{v['cycles_total']:.0f} cycles, NPU ops {v['npu_operators']}, CPU ops {v['cpu_operators']} ({cpu_ops})")
    print(f"| {report['arch']} | {s['fp32'] / 1024:.0f} / {s['int8'] / 1024:.0f} | {a['fp32_max_abs_diff']:.1e} | "
          f"{a['epe_tf']:.4f} / {a['epe_fp32']:.4f} / {a['epe_int8']:.4f} | {c['fp32_1_thread_ms']:.1f} / "
          f"{c['fp32_all_threads_ms']:.1f} | {c['int8_1_thread_ms']:.1f} / {c['int8_all_threads_ms']:.1f} | "
          f"{v['fps']:.1f} | {v['sram_used_kib']:.0f} | {v['cpu_operators']} |")
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- latency table

def check_table(table, measurements):
    """Predicted against Vela's FPS for fully compiled subnets: rows and the median/max abs error (%)."""
    rows = []
    for m in measurements:
        predicted = predict_fps(table, m["arch"])
        rows.append({"arch": supernet.format_arch(m["arch"]), "epe": m["epe"], "vela_fps": m["vela"]["fps"],
                     "predicted_fps": predicted, "error_pct": 100.0 * (predicted / m["vela"]["fps"] - 1.0)})
    errors = np.abs([r["error_pct"] for r in rows])
    return {"archs": rows, "median_abs_error_pct": float(np.median(errors)), "max_abs_error_pct": float(errors.max())}


def build_latency_table(args, run_dir, cfg, vela, target, hardware):
    """Compile the fair cycle all-0/all-1/all-2, build the per-layer table, check it against
    `--latency_check` seeded random subnets compiled in full; writes and returns the table."""
    h, w = export_size(args, cfg)
    (recal, val), (calibration, _), data_source = deployment_batches(cfg, h, w)
    check_archs = supernet.random_archs(args.latency_check, args.latency_seed)
    with tempfile.TemporaryDirectory() as work, \
            recalibration_session(run_dir, args.checkpoint_type, cfg, recal, val) as recalibrate:
        def measure(arch):
            return compile_int8(recalibrate, arch, h, w, calibration, vela, target, work)
        print(f"table from the fair cycle {', '.join(supernet.format_arch(a) for a in TABLE_ARCHS)}:")
        table = make_latency_table([measure(a) for a in TABLE_ARCHS], target, h, w)
        print(f"check against {len(check_archs)} random subnets (seed {args.latency_seed}) compiled in full:")
        table["check"] = dict(check_table(table, [measure(a) for a in check_archs]), seed=args.latency_seed)
    table.update(run_dir=run_dir, checkpoint=recalibrate.meta["prefix"], data_source=data_source,
                 vela_version=vela_version(vela), weights="the run's checkpoint, BN recalibrated per subnet",
                 devices=hardware)
    path = os.path.join(run_dir, f"latency_{target['accelerator_config']}_{h}x{w}.json")
    ckpt.write_json_atomic(path, table)
    check = table["check"]
    print(f"predicted vs Vela FPS: median abs error {check['median_abs_error_pct']:.4f}%, "
          f"max {check['max_abs_error_pct']:.4f}%; wrote {path}")
    return table


# ----------------------------------------------------------------------------- CLI

def export_size(args, cfg):
    """The export input size: the flags, else the run's; ValueError unless multiples of 4."""
    h = cfg["input_h"] if args.input_h is None else args.input_h
    w = cfg["input_w"] if args.input_w is None else args.input_w
    supernet.check_input_size(h, w)
    return h, w


def parse_args(argv):
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    with open(DEFAULT_CONFIG) as f:
        output_dir = json.load(f)["output_dir"]
    parser.add_argument("--experiment_name", help="run under output_dir (default: the newest with the checkpoint)")
    parser.add_argument("--output_dir", default=output_dir, help="where runs live (default: config.json's)")
    parser.add_argument("--checkpoint_type", default="best", choices=ckpt.CHECKPOINT_KINDS)
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--arch", help="arch code of the subnet to export, e.g. 0,1,2,0,1,2,0,1,2")
    task.add_argument("--latency_table", action="store_true", help="build the per-layer Ethos-U latency table")
    parser.add_argument("--input_h", type=int, help="export input height (default: the run's; multiple of 4)")
    parser.add_argument("--input_w", type=int, help="export input width (default: the run's; multiple of 4)")
    parser.add_argument("--eval_batches", type=int, help="validation batches for the checks (default: the run's)")
    parser.add_argument("--accelerator_config", default=DEFAULT_ACCELERATOR, choices=ACCELERATORS,
                        help="Vela --accelerator-config")
    parser.add_argument("--system_config", default=DEFAULT_SYSTEM_CONFIG,
                        help=f"Vela system config ({VELA_CONFIG_FILE})")
    parser.add_argument("--memory_mode", default=DEFAULT_MEMORY_MODE, help=f"Vela memory mode ({VELA_CONFIG_FILE})")
    parser.add_argument("--vela", help="Vela executable (default: beside this Python, else on PATH)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed CPU inferences before timing")
    parser.add_argument("--repeats", type=int, default=20, help="timed CPU inferences (the median is reported)")
    parser.add_argument("--latency_check", type=int, default=20, help="random subnets compiled to check the table")
    parser.add_argument("--latency_seed", type=int, default=0, help="seed of those subnets")
    return parser.parse_args(argv)


def run(args):
    """Check the inputs cheaply first (arch, size, Vela, checkpoint), then export or build the table."""
    hardware = devices.report()
    if args.arch is not None:
        supernet.parse_arch(args.arch)
    for flag in ("warmup", "repeats", "latency_check"):
        if getattr(args, flag) < (0 if flag == "warmup" else 1):
            raise ValueError(f"--{flag} {getattr(args, flag)} is out of range")
    vela = find_vela(args.vela)
    run_dir = evaluate.run_dir_of(args)
    cfg = ckpt.read_json(os.path.join(run_dir, "config.json"), "run config")
    if args.eval_batches is not None:
        cfg["eval_batches"] = args.eval_batches
    export_size(args, cfg)
    ckpt.load_meta(run_dir, args.checkpoint_type)
    target = {"accelerator_config": args.accelerator_config, "system_config": args.system_config,
              "memory_mode": args.memory_mode}
    if args.latency_table:
        return build_latency_table(args, run_dir, cfg, vela, target, hardware)
    return export_subnet(args, run_dir, cfg, vela, target, hardware)


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad input."""
    return evaluate.exit_code(run, parse_args(argv), errors=(ExportError,))


if __name__ == "__main__":
    sys.exit(main())
