"""One subnet to TFLite: its BN statistics recalibrated in the supernet (scoring.score_subnet), the
static inference graph of that arch alone with those values, checked to hold exactly that subnet,
converted to FP32 and to full INT8 (calibrated on real frames), and run with TFLite's interpreter
to see what the converted models compute."""
import contextlib
import dataclasses
import glob
import os
import shutil
import time
import warnings

import numpy as np
import tensorflow_quiet
from tensorflow_quiet import tf

import atomic_files
import batches
import metrics
import runs
import scoring
import supernet
from errors import ExportError, OutputError


CONTROL_FLOW_OPS = ("Case", "StatelessCase", "If", "StatelessIf", "While", "StatelessWhile")


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
        with tensorflow_quiet.quiet(replay=False):  # the converter's C++ notes (grappler, "fully_quantize: ...")
            return converter.convert()
    except Exception as err:  # the converter raises many types; its first line says what failed
        raise ExportError(f"TFLite conversion failed: {str(err).strip().splitlines()[0]}") from None


def static_models(values_of, arch, h, w, calibration, val_batches, with_fp32=True):
    """Build the static graph of `arch` at h x w, give its variables values_of(their names) (the
    recalibrated values: recalibration_session's recalibrate(arch, names)[1]) and convert it.

    Returns dict(check, int8, tf_outputs (the static graph's flow for every sample of
    `val_batches`, batch by batch), and with `with_fp32` the FP32 model)."""
    graph, images, flow = build_static_graph(arch, h, w)
    result = {"check": graph_check(graph, arch, h, w)}
    values = values_of(variable_names(graph))
    with tf.compat.v1.Session(graph=graph, config=tensorflow_quiet.session_config()) as sess:
        load_values(sess, graph, values)
        result["tf_outputs"] = [np.concatenate([sess.run(flow, {images: s[None]})
                                                for s in batches.batch_parts(b)[0]]) for b in val_batches]
        if with_fp32:
            result["fp32"] = convert(sess, images, flow)
        result["int8"] = convert(sess, images, flow, calibration)
    return result


def tflite_interpreter(model_path, num_threads=None, reference=False):
    """TensorFlow's TFLite interpreter of a model, tensors allocated, quietly (its deprecation
    notice and the XNNPACK line); with `reference` its reference kernels (OpResolverType.BUILTIN_REF)."""
    kind = tf.lite.experimental.OpResolverType
    with warnings.catch_warnings(), tensorflow_quiet.quiet():  # the notice points at ai-edge-litert, same interpreter
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=model_path, num_threads=num_threads,
                                          experimental_op_resolver_type=kind.BUILTIN_REF if reference else kind.AUTO)
        interpreter.allocate_tensors()
    return interpreter


def tflite_predictor(model_path, num_threads=None):
    """predict(images [1, H, W, 6] float32) -> flow [1, H, W, 2] float32 with TensorFlow's TFLite
    interpreter; an int8 model's input is quantised and its output dequantised with its own scale
    and zero point."""
    interpreter = tflite_interpreter(model_path, num_threads)
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


def predictions(predict, val_batches):
    """`predict` run on every validation sample one at a time, stacked batch by batch."""
    return [np.concatenate([predict(s[None].astype(np.float32)) for s in b[0]]) for b in val_batches]


def metrics_of(outputs, val_batches):
    """Metrics (metrics.NAMES and `sample_epe`) of predicted flows against the batches' true flow,
    brought to its size first (metrics.to_frame): the definition every subnet is scored by."""
    totals = {}
    for pred, batch in zip(outputs, val_batches):
        _, flows, valid = batches.batch_parts(batch)
        pred = metrics.to_frame(tf.constant(pred, tf.float32), flows.shape[1:3])
        metrics.add_sums(totals, metrics.flow_metric_sums(pred, tf.constant(flows, tf.float32), tf.constant(valid)))
    return dict(metrics.metrics_from_sums(totals), sample_epe=totals["sample_epe"])


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


def agreement(paths, tf_outputs, val_batches):
    """FP32 TFLite against the TensorFlow static graph (max abs difference of the full-resolution
    flow), INT8 against it (mean and max abs difference, px) and the EPE of TensorFlow, FP32 and INT8
    on the same validation batches."""
    fp32 = predictions(tflite_predictor(paths["fp32"]), val_batches)
    int8 = predictions(tflite_predictor(paths["int8"]), val_batches)
    epe = {name: metrics_of(outputs, val_batches)["epe"] for name, outputs in
           (("tf", tf_outputs), ("fp32", fp32), ("int8", int8))}
    int8_error = np.concatenate([np.abs(a - b).ravel() for a, b in zip(int8, tf_outputs)])
    return {"fp32_max_abs_diff": float(max(np.abs(a - b).max() for a, b in zip(fp32, tf_outputs))),
            "int8_mean_abs_diff": float(int8_error.mean()), "int8_max_abs_diff": float(int8_error.max()),
            "epe_tf": epe["tf"], "epe_fp32": epe["fp32"], "epe_int8": epe["int8"],
            "int8_epe_loss": epe["int8"] - epe["tf"], "val_samples": int(sum(len(b[0]) for b in val_batches))}


def cpu_timings(paths, sample, warmup, repeats):
    """Median ms of the FP32 and INT8 models on this CPU, 1 thread and all threads."""
    threads = os.cpu_count() or 1
    timings = {"threads_all": threads, "warmup": warmup, "repeats": repeats}
    for kind, path in paths.items():
        timings[f"{kind}_1_thread_ms"] = cpu_latency_ms(path, 1, sample, warmup, repeats)
        timings[f"{kind}_all_threads_ms"] = cpu_latency_ms(path, threads, sample, warmup, repeats)
    return timings


@contextlib.contextmanager
def recalibration_session(run_dir, kind, cfg, recal_batches, val_batches=(), size=None):
    """The scorer holding checkpoint `kind` of the run (the supernet, or a standalone run's one
    subnet), recalibrating at `size` (default the run's input size: the recalibration batches' size).

    Yields recalibrate(arch, names) -> (metrics or None, {variable name: value}): the subnet's BN
    statistics recalibrated into the run's variables (scoring.recalibrate) and, with validation
    batches, its metrics (scoring.score_subnet); then the values of the variables `names`.
    """
    run_size = (cfg["input_h"], cfg["input_w"])
    h, w = size or run_size
    with scoring.restored_scorer(run_dir, kind, h, w, static_arch=runs.standalone_arch(cfg),
                                 input_size=run_size) as (sess, scorer, meta):
        variables = scorer["variables"]

        def recalibrate(arch, names):
            missing = [n for n in names if n not in variables]
            if missing:
                raise ExportError(f"the run's graph has no variable {missing[0]} ({len(missing)} missing)")
            if val_batches:
                result = scoring.score_subnet(sess, scorer, arch, recal_batches, val_batches)
            else:
                result = scoring.recalibrate(sess, scorer, arch, recal_batches)
            return result, sess.run({n: variables[n] for n in names})

        recalibrate.meta = meta
        yield recalibrate


# ----------------------------------------------------------------------------- an export folder

def export_subnet(run_dir, kind, cfg, arch, size, target, out_dir, cache, options):
    """Recalibrate, build, convert, check, time and compile one subnet at `size` (h, w); write
    out_dir (model_fp32.tflite, model_int8.tflite, the compiler's output in <compiler name>/, and
    export_report.json) as a whole or not at all: it is built in a temp folder and renamed at the
    end, and temp folders of killed exports are removed first. Returns the report.

    The run's validation frames are resized to `size` and the flow predicted there is scored at the
    frame's size (batches.deployment_batches); INT8 is calibrated on the first
    options["calibration_samples"] training crops resized the same way. cache: the compiler with
    its cache (compiler.CompileCache); options: calibration_samples, base (the run's batches, if
    read already: batches.deployment_base), recal_at_size (recalibrate BN on batches
    resized to `size` instead of at the run's size), timing ((warmup, repeats) of the CPU timings,
    or None), extra (more fields for the report), folder (where out_dir will be when its caller
    builds it aside: the paths the report names; default out_dir), recalibrate (a caller's open
    recalibration_session on these same recalibration batches; default: one opened here)."""
    h, w = size
    check_folder(out_dir)
    base = options.get("base") or batches.deployment_base(cfg, options["calibration_samples"])
    data = batches.deployment_batches(base, size, options["recal_at_size"])
    calibration, val_export, data_source = data["calibration"], data["val"], data["data_source"]
    with contextlib.ExitStack() as stack:
        recalibrate = options.get("recalibrate") or stack.enter_context(recalibration_session(
            run_dir, kind, cfg, data["recal"], size=tuple(int(v) for v in data["recal"][0][0].shape[1:3])))
        models = static_models(lambda names: recalibrate(arch, names)[1], arch, h, w, calibration, val_export)
    if not models["check"]["ok"]:
        raise ExportError(f"the static graph of {supernet.format_arch(arch)} is not that subnet alone: "
                          f"{models['check']}")
    with building(out_dir) as work:
        paths = {k: atomic_files.write_atomic(os.path.join(work, f"model_{k}.tflite"), models[k])
                 for k in ("fp32", "int8")}
        name = cache.tool.name
        summary, _ = cache.compile(paths["int8"], target, os.path.join(work, name), supernet.structure(arch, size))
        report = {"arch": supernet.format_arch(arch), "run_dir": run_dir, "checkpoint": recalibrate.meta["prefix"],
                  "checkpoint_type": kind, "data_source": data_source, "input_size": [h, w],
                  "run_input_size": [cfg["input_h"], cfg["input_w"]], "params": supernet.count_params(arch, h, w),
                  "gmacs": supernet.count_macs(arch, h, w) / 1e9, "graph_check": models["check"],
                  "recalibration": {"batches": len(data["recal"]), "at_size": options["recal_at_size"]},
                  "sizes_bytes": {k: os.path.getsize(p) for k, p in paths.items()},
                  "agreement": agreement(paths, models["tf_outputs"], val_export),
                  "calibration": {"samples": int(sum(len(b[0]) for b in calibration)),
                                  "source": f"the first {data_source} training crops of the run's seeded stream at "
                                            f"{cfg['input_h']}x{cfg['input_w']}, resized to {h}x{w}"},
                  name: dict(summary, version=cache.version, target=dataclasses.asdict(target),
                             compiled_model=os.path.join(options.get("folder", out_dir), name,
                                                         os.path.basename(summary["compiled_model"])))}
        if options.get("timing"):
            sample = batches.batch_parts(val_export[0])[0][:1].astype(np.float32)
            report["cpu"] = cpu_timings(paths, sample, *options["timing"])
        report.update(options.get("extra") or {})
        atomic_files.write_json_atomic(os.path.join(work, "export_report.json"), report)
    return report


def check_folder(out_dir):
    """OutputError naming out_dir if a file is in the way of the folder (found before any work)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"cannot write the export folder {out_dir}: a file of that name is in the way")


@contextlib.contextmanager
def building(out_dir):
    """Yield a fresh temp folder beside out_dir; when the block succeeds it replaces out_dir
    (atomic_files.replace_folder), when it fails it is removed: out_dir is whole or untouched. Temp
    folders of processes killed while building out_dir are removed first."""
    check_folder(out_dir)
    atomic_files.remove_killed_temps(f"{glob.escape(out_dir)}.tmp*")
    work = f"{out_dir}.tmp{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        os.makedirs(work)
        yield work
        atomic_files.replace_folder(work, out_dir)
    except OSError as err:
        shutil.rmtree(work, ignore_errors=True)
        raise OutputError(f"cannot write {err.filename or out_dir}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
