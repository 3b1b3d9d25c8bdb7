"""Speed and memory benchmark of EdgeFlowNAS on whatever device TensorFlow sees.

One run measures six figures:
  1. the fused fair step (train_graph.build_train_step: 3 paths, one update) against the sum of three
     static single-subnet training steps of the same three archs on the same batch, and their ratio
     (with --distill_weight, also the fair step with in-place distillation against the step without);
  2. the achieved GFLOP/s of the fair step (FLOPS_FORMULA);
  3. the data pipeline (PNG/.flo decode + crop + batch from an FC2 tree on disk) in samples/s,
     against the samples/s the fair step consumes;
  4. evaluation: seconds per subnet (BN recalibration + scoring), the scorer graph built once;
  5. the peak memory of the process (and of the GPU, if one is visible);
  6. search: all 19,683 subnets scored with shared computation against a seeded sample scored one
     by one with evaluate, and the speed-up over scoring the whole space one by one;
  7. with --workers N: the training step of the global batch by 1 process and by N data-parallel
     worker processes on loopback ports (worker_bench.py), and their ratio.
Step timings are medians of interleaved repetitions (fused, static 1, static 2, static 3, fused, ...)
after untimed warm-up runs, so machine noise hits every candidate alike.

    python bench.py --batch_size 4 --repeats 3
    python bench.py --batch_size 32 --repeats 2 --json bench.json
"""
import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import devices
import tensorflow_quiet
from tensorflow_quiet import tf

import atomic_files
import config
import data_fc2
import fair
import fc2_pipeline
import scoring
import search_tree
import supernet
import synthetic
import train_graph
import worker_bench
from errors import ArchError, ArgumentParser, EdgeFlowError

FLOPS_FORMULA = ("sum over the 3 paths of count_macs(arch, h, w) x 2 FLOP/MAC x 3 (forward + backward) x batch "
                 "/ seconds")
TOTAL_STEPS = 1000  # only sets the cosine learning-rate schedule of the benchmarked steps
STEP_TARGET = 1.05  # the fused step may cost at most this times the three static steps
PIPELINE_TARGET = 100.0  # the pipeline should deliver this many times what the fair step consumes
FC2_SIZE = (384, 512)  # FlyingChairs2 image size


# ----------------------------------------------------------------------------- setup

def bench_config(args):
    """config.json with the benchmark's batch size, input size and seed, checked like train.py's."""
    overrides = {"batch_size": args.batch_size, "input_h": args.h, "input_w": args.w, "seed": args.seed}
    cfg = config.merge_config(config.defaults(), overrides, "bench flags")
    config.check_ranges(cfg, "bench flags")
    return cfg


def load_average():
    """The 1-minute load average (runnable processes; above the core count, timings are contended),
    or None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def fixed_batch(batch, h, w, seed):
    """One synthetic batch with real motion as numpy: images [B, h, w, 6] in [-1, 1], flows [B, h, w, 2]."""
    arrays = synthetic.make_synthetic_arrays(batch, h, w, seed)
    images = np.concatenate([fc2_pipeline.normalise(arrays["img0"]), fc2_pipeline.normalise(arrays["img1"])], axis=-1)
    return images, arrays["flow"]


def input_placeholders(h, w):
    """Feedable images [None, h, w, 6] and flows [None, h, w, 2], the shapes train.py's input has."""
    images = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.INPUT_CHANNELS], "images")
    flows = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.FLOW_CHANNELS], "flows")
    return images, flows


def peak_rss_mib():
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def gpu_peak_mib():
    """Peak memory TensorFlow's allocator used on GPU:0 so far, in MiB; None without a GPU."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20


# ----------------------------------------------------------------------------- 1, 2: training steps

def static_train_step(cfg, images, flows, arch, total_steps):
    """One static subnet's training step (only the chosen layers exist), with the same loss and
    update as the fused step (train_graph.build_update). Returns the train op."""
    loss = train_graph.multiscale_loss(supernet.build_flows(images, arch, mode="train"), flows, cfg["loss_weights"])
    return train_graph.build_update(cfg, loss, total_steps)["train_op"]


def step_session(graph, train_op, feed):
    """{"sess", "fetch", "feed"}: a session on `graph` (finalised, variables initialised) that runs
    `train_op` with `feed` ({placeholder name: numpy})."""
    with graph.as_default():
        init = tf.compat.v1.global_variables_initializer()
        feed = {graph.get_tensor_by_name(name): value for name, value in feed.items()}
    graph.finalize()
    sess = tf.compat.v1.Session(graph=graph, config=tensorflow_quiet.session_config())
    sess.run(init)
    return {"sess": sess, "fetch": train_op, "feed": feed}


def fused_session(cfg, cycle, images_np, flows_np, path_devices=None):
    """step_session of the fused fair step on the fixed batch, `cycle` fed as its 3 paths
    (spread over `path_devices` when there are several)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(cfg["seed"])
        images, flows = input_placeholders(cfg["input_h"], cfg["input_w"])
        ops = train_graph.build_train_step(cfg, images, flows, TOTAL_STEPS, path_devices)
    feed = {images.name: images_np, flows.name: flows_np, ops["arch_paths"].name: np.array(cycle, np.int32)}
    return step_session(graph, ops["train_op"], feed)


def static_session(cfg, arch, images_np, flows_np):
    """step_session of one static subnet's training step on the fixed batch."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(cfg["seed"])
        images, flows = input_placeholders(cfg["input_h"], cfg["input_w"])
        train_op = static_train_step(cfg, images, flows, arch, TOTAL_STEPS)
    return step_session(graph, train_op, {images.name: images_np, flows.name: flows_np})


def run_step(step, options=None, metadata=None):
    """Run a step_session's train op once."""
    step["sess"].run(step["fetch"], step["feed"], options=options, run_metadata=metadata)


def time_interleaved(steps, warmup, repeats):
    """Run every step of {name: step_session} in turn, warmup + repeats rounds, so noise hits every
    candidate alike; returns {name: {"warmup": [wall s], "timed": [wall s], "cpu": [s]}}, "cpu"
    being this process's CPU time (all threads) of each timed run: the work done, whatever else
    shares the machine."""
    times = {name: {"warmup": [], "timed": [], "cpu": []} for name in steps}
    for round_index in range(warmup + repeats):
        for name, step in steps.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            run_step(step)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if round_index < warmup:
                times[name]["warmup"].append(wall)
            else:
                times[name]["timed"].append(wall)
                times[name]["cpu"].append(cpu)
    return times


def executed_convs(step):
    """{op type: count} of the convolution kernels (forward and backward) that one traced run of
    the step executed; ops of untaken switch_case branches never run, so they are not counted."""
    options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.SOFTWARE_TRACE)
    metadata = tf.compat.v1.RunMetadata()
    run_step(step, options, metadata)
    counts = {}
    for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
            op_type = node.timeline_label.split(" = ", 1)[-1].split("(", 1)[0]
            if "Conv2D" in op_type:
                counts[op_type] = counts.get(op_type, 0) + 1
    return counts


def step_flops(cycle, batch, h, w):
    """Analytic FLOPs of one fair step: FLOPS_FORMULA without the division. It counts E0 and E1 once
    per path, as the three static steps run them; the fused step runs them once for all three."""
    return sum(supernet.count_macs(arch, h, w) for arch in cycle) * 2 * 3 * batch


def build_steps(cfg, cycle, images_np, flows_np, path_devices, distill_weight=0.0):
    """{"fused": step_session, "static_1".."static_3": step_session} for one fair cycle,
    "fused_on_devices", the fused step with its paths spread over `path_devices`, if there are several,
    and "fused_distill", the fused step with in-place distillation, if `distill_weight` > 0."""
    steps = {"fused": fused_session(cfg, cycle, images_np, flows_np)}
    if distill_weight > 0:
        steps["fused_distill"] = fused_session(dict(cfg, distill_weight=distill_weight), cycle, images_np, flows_np)
    for p, arch in enumerate(cycle):
        steps[f"static_{p + 1}"] = static_session(cfg, arch, images_np, flows_np)
    if len(path_devices) > 1:
        steps["fused_on_devices"] = fused_session(cfg, cycle, images_np, flows_np, path_devices)
    return steps


def summarise_steps(times, convs, cycle, batch, h, w):
    """Figures 1 and 2 from the interleaved timings and the executed convolutions."""
    statics = [name for name in times if name.startswith("static")]
    median = {name: statistics.median(t["timed"]) for name, t in times.items()}
    cpu = {name: statistics.median(t["cpu"]) for name, t in times.items()}
    static_sum = sum(median[n] for n in statics)
    ratio = median["fused"] / static_sum
    per_round = [fused / sum(times[n]["timed"][i] for n in statics) for i, fused in enumerate(times["fused"]["timed"])]
    flops = step_flops(cycle, batch, h, w)
    return {"cycle": [supernet.format_arch(a) for a in cycle],
            "gmacs_per_pair": [supernet.count_macs(a, h, w) / 1e9 for a in cycle],
            "times": times, "median_s": median, "static_sum_s": static_sum,
            "ratio_fused_over_static_sum": ratio, "ratio_per_round": per_round,
            "ratio_per_round_median": statistics.median(per_round), "target_ratio": STEP_TARGET,
            "ratio_ok": ratio <= STEP_TARGET, "median_cpu_s": cpu,
            "cpu_ratio_fused_over_static_sum": cpu["fused"] / sum(cpu[n] for n in statics), "executed_convs": convs,
            "convs_fused": sum(convs["fused"].values()), "convs_static": sum(sum(convs[n].values()) for n in statics),
            "step_gflop": flops / 1e9, "flops_formula": FLOPS_FORMULA,
            "fused_gflops_per_s": flops / median["fused"] / 1e9, "static_gflops_per_s": flops / static_sum / 1e9,
            "fused_samples_per_s": batch / median["fused"]}


def measure_steps(cfg, args, images_np, flows_np, log, path_devices):
    """Figures 1 and 2: the fused fair step against three static steps of the same cycle.

    Each step first runs once, untimed (the session optimises its graph on its first run), the fused
    step first of all, so the memory peak read after it is that of the fused step alone; then all
    of them run interleaved, `warmup` untimed rounds and `repeats` timed ones; finally one traced run
    of each counts the convolutions it executed.
    """
    h, w = cfg["input_h"], cfg["input_w"]
    cycle = fair.fair_cycle(args.seed, 0)
    log(f"building the fused fair step and {len(cycle)} static steps for cycle "
        + " | ".join(supernet.format_arch(a) for a in cycle))
    steps = build_steps(cfg, cycle, images_np, flows_np, path_devices, args.distill_weight)
    log("first run of each step (graph optimisation, once per session), the fused step first")
    first_s = {}
    for name, step in steps.items():
        start = time.perf_counter()
        run_step(step)
        first_s[name] = time.perf_counter() - start
        if name == "fused":
            fused_rss = peak_rss_mib()
    log(f"timing {args.warmup} warm-up + {args.repeats} timed rounds of {', '.join(steps)} (interleaved)")
    times = time_interleaved(steps, args.warmup, args.repeats)
    convs = {name: executed_convs(step) for name, step in steps.items()}
    for step in steps.values():
        step["sess"].close()
    return dict(summarise_steps(times, convs, cycle, args.batch_size, h, w), first_run_s=first_s,
                rss_after_fused_first_run_mib=fused_rss)


# ----------------------------------------------------------------------------- 3: data pipeline

def measure_pipeline(cfg, args, root, steps, log):
    """Figure 3: samples/s of fc2_pipeline.make_dataset over an FC2 tree written to `root`, eagerly,
    after one batch of warm-up, against the samples/s the fair step consumes (`steps`, from
    measure_steps); also both costs in CPU time per sample, which machine load does not change."""
    start = time.perf_counter()
    data_fc2.write_synthetic_fc2(root, args.data_samples, seed=args.seed, h=FC2_SIZE[0], w=FC2_SIZE[1])
    samples = data_fc2.list_samples(root, "train", "lists")
    log(f"wrote an FC2 tree of {args.data_samples} samples at {FC2_SIZE[0]}x{FC2_SIZE[1]} in "
        f"{time.perf_counter() - start:.1f}s; reading its {len(samples)} training samples")
    dataset = fc2_pipeline.make_dataset(samples, args.batch_size, (cfg["input_h"], cfg["input_w"]), train=True,
                                        max_flow=cfg["max_flow"], seed=args.seed)
    batches = iter(dataset)
    next(batches)
    num_batches = max(1, -(-args.pipeline_samples // args.batch_size))
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
        next(batches)
    seconds, cpu_ms = time.perf_counter() - start, (time.process_time() - cpu_start) * 1e3
    num = num_batches * args.batch_size
    consumed_per_s = steps["fused_samples_per_s"]
    per_s, ratio = num / seconds, num / seconds / consumed_per_s
    step_cpu_ms = steps["median_cpu_s"]["fused"] / args.batch_size * 1e3
    return {"fc2_samples_on_disk": args.data_samples, "train_samples_read": len(samples),
            "image_size": list(FC2_SIZE), "batches_timed": num_batches, "seconds": seconds,
            "samples_per_s": per_s, "cpu_ms_per_sample": cpu_ms / num, "samples_per_s_per_core": num * 1e3 / cpu_ms,
            "fair_step_consumes_samples_per_s": consumed_per_s, "ratio_delivered_over_consumed": ratio,
            "target_ratio": PIPELINE_TARGET, "ratio_ok": ratio >= PIPELINE_TARGET,
            "cores_for_target": PIPELINE_TARGET * consumed_per_s * cpu_ms / num / 1e3,
            "fair_step_cpu_ms_per_sample": step_cpu_ms, "cpu_cost_ratio": step_cpu_ms * num / cpu_ms}


# ----------------------------------------------------------------------------- 4: evaluation

def time_scoring(sess, scorer, pool, recal_batches, val_batches):
    """(wall s, CPU s) of scoring.score_subnet for each arch of `pool`, in order."""
    wall, cpu = [], []
    for arch in pool:
        start, cpu_start = time.perf_counter(), time.process_time()
        scoring.score_subnet(sess, scorer, arch, recal_batches, val_batches)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return wall, cpu


def first_over_rest(values):
    """values[0] / median(values[1:]): about 1 when the first costs what the others do."""
    return values[0] / statistics.median(values[1:]) if len(values) > 1 else 1.0


def measure_eval(cfg, args, images_np, flows_np, log):
    """Figure 4: seconds per subnet of scoring.score_subnet (BN recalibration + scoring, what
    scoring.evaluate runs per subnet) on a scorer graph built and finalised once: a subnet that
    added an op would raise, and the op count is the same after the last one. The session's first
    run (its one-time graph optimisation) is timed apart. Times per GMAC take out the size of
    each subnet, so a flat list shows nothing grows from the 1st subnet to the last."""
    h, w = cfg["input_h"], cfg["input_w"]
    paths = fair.paths_per_cycle()
    pool_size = -(-args.eval_subnets // paths) * paths
    pool = fair.build_eval_pool(pool_size, args.seed, h, w)[:args.eval_subnets]
    graph = tf.Graph()
    with graph.as_default():
        images, flows = input_placeholders(h, w)
        scorer = scoring.build_scorer(images, flows)
        init = tf.compat.v1.global_variables_initializer()
    graph.finalize()
    ops_before = len(graph.get_operations())
    recal_batches = [(images_np, flows_np)] * args.recal_batches
    val_batches = [(images_np, flows_np)] * args.val_batches
    log(f"scoring {len(pool)} subnets ({args.recal_batches} recalibration + {args.val_batches} validation "
        f"batches of {args.batch_size} each) on one finalised graph of {ops_before} ops")
    with tf.compat.v1.Session(graph=graph, config=tensorflow_quiet.session_config()) as sess:
        sess.run(init)
        (first_s,), _ = time_scoring(sess, scorer, pool[:1], recal_batches, val_batches)
        wall, cpu = time_scoring(sess, scorer, pool, recal_batches, val_batches)
    gmacs = [supernet.count_macs(arch, h, w) / 1e9 for arch in pool]
    wall_per_gmac = [s / g for s, g in zip(wall, gmacs)]
    cpu_per_gmac = [s / g for s, g in zip(cpu, gmacs)]
    return {"subnets": [supernet.format_arch(a) for a in pool], "gmacs": gmacs,
            "recal_batches": args.recal_batches, "val_batches": args.val_batches, "session_first_run_s": first_s,
            "seconds_per_subnet": wall, "cpu_seconds_per_subnet": cpu, "median_s": statistics.median(wall),
            "seconds_per_gmac": wall_per_gmac, "cpu_seconds_per_gmac": cpu_per_gmac,
            "first_over_median_rest_per_gmac": first_over_rest(wall_per_gmac),
            "cpu_first_over_median_rest_per_gmac": first_over_rest(cpu_per_gmac),
            "graph_ops_before": ops_before, "graph_ops_after": len(graph.get_operations()),
            "graph_finalized": graph.finalized}


# ----------------------------------------------------------------------------- 6: search

def measure_search(args, log):
    """Figure 6: the whole space scored with shared computation (search_tree.TreeScorer) against a
    seeded sample scored one by one with scoring.score_subnet, on the same batches in one graph.
    The speed-up is the per-subnet time x 19,683 / the whole-space time; the MAC ratio is its limit."""
    h, w, batch = args.search_h, args.search_w, args.search_batch
    images_np, flows_np = fixed_batch(batch, h, w, args.seed)
    recal, val = [(images_np, flows_np)] * args.recal_batches, [(images_np, flows_np)] * args.val_batches
    sample = supernet.random_archs(args.search_subnets, args.seed)
    graph = tf.Graph()
    with graph.as_default():
        images, flows = input_placeholders(h, w)
        scorer = scoring.build_scorer(images, flows)
        tree = search_tree.build_tree([(h, w)])
        init = tf.compat.v1.global_variables_initializer()
    graph.finalize()
    log(f"search: {len(sample)} sampled subnets one by one, then all {supernet.SPACE.num_archs:,} with sharing "
        f"(batch {batch} at {h}x{w}, {args.recal_batches} recal + {args.val_batches} val batches)")
    with tf.compat.v1.Session(graph=graph, config=tensorflow_quiet.session_config()) as sess:
        sess.run(init)
        time_scoring(sess, scorer, sample[:1], recal, val)  # the session's one-time first run
        alone, _ = time_scoring(sess, scorer, sample, recal, val)
        start, cpu_start = time.perf_counter(), time.process_time()
        search_tree.score_archs(search_tree.TreeScorer(sess, tree, recal, val), [supernet.index_to_arch(i)
                                                                        for i in range(supernet.SPACE.num_archs)])
        whole, whole_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    shared, every = search_tree.shared_macs(h, w)
    per_subnet = statistics.mean(alone)
    return {"size": [h, w], "batch": batch, "sample": [supernet.format_arch(a) for a in sample],
            "seconds_per_subnet": alone, "mean_s_per_subnet": per_subnet, "whole_space_s": whole,
            "whole_space_cpu_s": whole_cpu, "speedup": per_subnet * supernet.SPACE.num_archs / whole,
            "speedup_per_gmac": sum(alone) / sum(supernet.count_macs(a, h, w) for a in sample) * every / whole,
            "mac_speedup": every / shared, "shared_tmac_per_pair": shared / 1e12, "alone_tmac_per_pair": every / 1e12,
            "sample_gmacs_mean": statistics.mean(supernet.count_macs(a, h, w) / 1e9 for a in sample),
            "space_gmacs_mean": every / supernet.SPACE.num_archs / 1e9}


# ----------------------------------------------------------------------------- report

def verdict(ok):
    """'met' or 'NOT met'."""
    return "met" if ok else "NOT met"


def report_lines(result):
    """The readable table of the five figures (six with the search)."""
    dev, opts = result["devices"], result["settings"]
    lines = [f"EdgeFlowNAS benchmark, {dev['summary']}",
             f"batch {opts['batch_size']} at {opts['h']}x{opts['w']}; steps: medians of {opts['repeats']} interleaved "
             f"rounds after {opts['warmup']} warm-up; fair cycle {' | '.join(result['steps']['cycle'])}",
             f"1-minute load average {result['load_average_start']} at the start, {result['load_average_end']} at "
             f"the end ({dev['cpu_threads']} CPU threads; above that, wall-clock figures are contended: see the "
             "CPU-time ratio)", ""]
    lines += step_lines(result["steps"], dev) + pipeline_lines(result["pipeline"], opts)
    lines += eval_lines(result["eval"]) + memory_lines(result["memory"], result["steps"])
    if "search" in result:
        lines += search_lines(result["search"], opts)
    if result["memory"]["gpu_peak_mib"] is not None:
        lines.append(f"  peak GPU memory (TensorFlow allocator)  {result['memory']['gpu_peak_mib']:.0f} MiB")
    if "data_parallel" in result:
        lines += worker_bench.report_lines(result["data_parallel"], dev)
    return lines


def step_lines(steps, dev):
    """Figures 1 and 2: the fused fair step against three static steps, and its GFLOP/s."""
    med = steps["median_s"]
    statics = " + ".join(f"{med[n]:.3f}" for n in med if n.startswith("static"))
    return [
        f"1 fair step, fused (3 paths, 1 update)   {med['fused']:.3f} s",
        f"  3 static single-subnet steps            {statics} = {steps['static_sum_s']:.3f} s",
        f"  ratio fused / sum of static             {steps['ratio_fused_over_static_sum']:.3f} (median of per-round "
        f"ratios {steps['ratio_per_round_median']:.3f}; target <= {STEP_TARGET}: {verdict(steps['ratio_ok'])})",
        f"  process CPU time, fused / static sum    {steps['median_cpu_s']['fused']:.3f} / "
        f"{sum(v for n, v in steps['median_cpu_s'].items() if n.startswith('static')):.3f} s = "
        f"{steps['cpu_ratio_fused_over_static_sum']:.3f} (the work done, whatever else runs here)",
        f"  convolutions executed, fused / static   {steps['convs_fused']} / {steps['convs_static']} "
        "(forward + backward kernels of one step)",
    ] + variant_step_lines(steps, dev) + [
        "  untimed first runs, then warm-up (s)    " + "; ".join(
            f"{name} {steps['first_run_s'][name]:.2f}, " + (" ".join(f"{s:.2f}" for s in t["warmup"]) or "none")
            for name, t in steps["times"].items()),
        f"2 achieved GFLOP/s, fused fair step       {steps['fused_gflops_per_s']:.1f} "
        f"({steps['step_gflop']:.1f} GFLOP per step; the static steps {steps['static_gflops_per_s']:.1f})",
        f"  FLOPs = {FLOPS_FORMULA}"]


def pipeline_lines(pipe, opts):
    """Figure 3: the FC2 data pipeline against what the fair step consumes."""
    return [
        f"3 data pipeline, FC2 tree on disk         {pipe['samples_per_s']:.1f} samples/s "
        f"(2 PNG + .flo decode at {FC2_SIZE[0]}x{FC2_SIZE[1]}, crop, batch)",
        f"  the fair step consumes                  {pipe['fair_step_consumes_samples_per_s']:.2f} samples/s",
        f"  ratio delivered / consumed              {pipe['ratio_delivered_over_consumed']:.1f}x "
        f"(target >= {PIPELINE_TARGET:.0f}x at batch 32: {verdict(pipe['ratio_ok'])} at batch {opts['batch_size']})",
        f"  CPU time per sample, step / pipeline    {pipe['fair_step_cpu_ms_per_sample']:.0f} / "
        f"{pipe['cpu_ms_per_sample']:.1f} ms = {pipe['cpu_cost_ratio']:.1f}x (the ratio on equal cores, "
        "whatever the load)",
        f"  {f'{PIPELINE_TARGET:.0f}x needs':<40}{pipe['cores_for_target']:.2f} cores free for "
        f"decoding at {pipe['samples_per_s_per_core']:.0f} samples/s per core"]


def eval_lines(ev):
    """Figure 4: seconds per subnet evaluated, and that the scorer graph is built once."""
    return [
        f"4 evaluation, recalibration + scoring     {ev['median_s']:.3f} s per subnet "
        f"(median of {len(ev['subnets'])}; "
        f"{ev['recal_batches']} recal + {ev['val_batches']} val batches each)",
        "  s per subnet, subnets 1..n              " + " ".join(f"{s:.2f}" for s in ev["seconds_per_subnet"]),
        "  s per GMAC, subnets 1..n                " + " ".join(f"{s:.3f}" for s in ev["seconds_per_gmac"]),
        "  CPU s per GMAC, subnets 1..n            " + " ".join(f"{s:.3f}" for s in ev["cpu_seconds_per_gmac"]),
        f"  1st / median of the rest, per GMAC      {ev['first_over_median_rest_per_gmac']:.2f} wall, "
        f"{ev['cpu_first_over_median_rest_per_gmac']:.2f} CPU (flat: about 1)",
        f"  graph built once                        {ev['graph_ops_before']} ops before the 1st subnet, "
        f"{ev['graph_ops_after']} after the last (finalised); the session's first run "
        f"{ev['session_first_run_s']:.1f} s, once"]


def memory_lines(mem, steps):
    """Figure 5: the process's peak memory, with its running totals."""
    return [
        f"5 peak memory of the process (RSS)        {mem['peak_rss_mib']:.0f} MiB (running totals: the fused step "
        f"alone {steps['rss_after_fused_first_run_mib']:.0f}, + the 3 static steps {mem['rss_after_steps_mib']:.0f}, "
        f"+ the pipeline {mem['rss_after_pipeline_mib']:.0f}, + the evaluation {mem['rss_after_eval_mib']:.0f})"]


def search_lines(se, opts):
    """Figure 6: the whole space scored with shared computation against one by one."""
    return [
        f"6 search, all {supernet.SPACE.num_archs:,} subnets shared         {se['whole_space_s']:.1f} s "
        f"(CPU {se['whole_space_cpu_s']:.1f} s; batch {se['batch']} at {se['size'][0]}x{se['size'][1]}, "
        f"{opts['recal_batches']} recal + {opts['val_batches']} val batches)",
        f"  one by one with evaluate                {se['mean_s_per_subnet']:.3f} s per subnet (mean of "
        f"{len(se['sample'])} seeded subnets, {se['sample_gmacs_mean']:.3f} GMAC on average; the space's "
        f"{se['space_gmacs_mean']:.3f})",
        f"  speed-up over 19,683 one by one         {se['speedup']:.1f}x (per-subnet time x 19,683 / whole-space "
        f"time; the MAC count's limit {se['mac_speedup']:.1f}x: {se['shared_tmac_per_pair']:.3f} against "
        f"{se['alone_tmac_per_pair']:.1f} TMAC per image pair)",
        f"  the same, per GMAC                      {se['speedup_per_gmac']:.1f}x "
        "(the sample's seconds per GMAC x the space's GMACs / whole-space time: takes out the sample's size)"]


def variant_step_lines(steps, dev):
    """The fair step with its paths spread over several devices and the one with in-place
    distillation, each next to the plain step (each only when asked for)."""
    med, cpu = steps["median_s"], steps["median_cpu_s"]
    placed = ", ".join(d.replace("/device:", "") for d in dev["path_devices"])
    shared = "" if dev["gpus"] else " (logical devices sharing the same CPU threads)"
    variants = (("fused_on_devices", f"fused, paths on {placed}", "on one device" + shared),
                ("fused_distill", "fused, with distillation", "without"))
    return [f"  {label:<40}{med[name]:.3f} s against {med['fused']:.3f} s {against} = {med[name] / med['fused']:.3f} "
            f"(CPU time {cpu[name] / cpu['fused']:.3f})" for name, label, against in variants if name in med]


def parse_args(argv):
    """Command-line flags, range-checked."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=32, help="batch size of every step, pipeline and scoring")
    parser.add_argument("--h", type=int, default=180, help="input height (multiple of 4)")
    parser.add_argument("--w", type=int, default=240, help="input width (multiple of 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds after each step's first run (which "
                        "optimises its graph); the fused step's 2nd run still maps new memory")
    parser.add_argument("--seed", type=int, default=42, help="fair cycle, data and eval pool seed")
    parser.add_argument("--eval_subnets", type=int, default=12, help="subnets of the eval pool to score")
    parser.add_argument("--recal_batches", type=int, default=2, help="BN recalibration batches per subnet")
    parser.add_argument("--val_batches", type=int, default=2, help="validation batches per subnet")
    parser.add_argument("--data_samples", type=int, default=8, help="samples in the FC2 tree written for the pipeline")
    parser.add_argument("--pipeline_samples", type=int, default=512, help="samples to time the pipeline over")
    parser.add_argument("--search_subnets", type=int, default=12, help="seeded subnets scored one by one (figure 6)")
    parser.add_argument("--search_h", type=int, default=64, help="input height of figure 6 (the whole space)")
    parser.add_argument("--search_w", type=int, default=96, help="input width of figure 6")
    parser.add_argument("--search_batch", type=int, default=8, help="batch size of figure 6")
    parser.add_argument("--no_search", action="store_true", help="skip figure 6 (the whole space takes minutes)")
    parser.add_argument("--devices", type=int, default=1, choices=range(1, fair.paths_per_cycle() + 1), help="also "
                        "time the fair step with its 3 paths spread over this many devices (GPUs, or logical CPUs)")
    parser.add_argument("--workers", type=int, default=0, help="also time the step by this many data-parallel "
                        "worker processes on this machine against one (figure 7; 0: not measured)")
    parser.add_argument("--distill_weight", type=float, default=0.0, help="also time the fair step with in-place "
                        "distillation at this weight against the step without (0: not measured)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure and timing to FILE")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return parser, args


def check_args(parser, args):
    """The flags' ranges and combinations, checked before any work: a one-line error naming the flag."""
    if args.workers and (args.workers < 2 or args.batch_size % args.workers):
        parser.error(f"--workers {args.workers} must be 0, or 2 or more dividing --batch_size {args.batch_size}")
    minimum = {"batch_size": 1, "repeats": 1, "warmup": 0, "seed": 0, "eval_subnets": 1, "recal_batches": 1,
               "val_batches": 1, "data_samples": 5, "pipeline_samples": 1, "search_subnets": 1, "search_batch": 1,
               "distill_weight": 0}
    for key, low in minimum.items():
        if getattr(args, key) < low:
            parser.error(f"--{key} {getattr(args, key)} must be >= {low}")
    if args.eval_subnets > fair.MAX_POOL_SIZE:
        parser.error(f"--eval_subnets {args.eval_subnets} must be at most {fair.MAX_POOL_SIZE} (an eval pool's size)")
    try:
        supernet.check_input_size(args.search_h, args.search_w)
    except ArchError as err:
        parser.error(f"--search_h/--search_w: {err}")
    if args.json and (os.path.isdir(args.json) or not os.path.isdir(os.path.dirname(args.json) or ".")):
        parser.error(f"--json {args.json}: must be a file in an existing folder")  # checked before the work


def run(cfg, args, log):
    """Measure the five figures; returns the full result dict."""
    result = {"devices": devices.report(args.devices, log=log, paths=fair.paths_per_cycle()),
              "load_average_start": load_average(),
              "settings": {k: getattr(args, k) for k in ("batch_size", "h", "w", "repeats", "warmup", "seed",
                           "eval_subnets", "recal_batches", "val_batches", "data_samples", "pipeline_samples",
                           "devices", "distill_weight")}}
    images_np, flows_np = fixed_batch(args.batch_size, cfg["input_h"], cfg["input_w"], args.seed)
    result["steps"] = measure_steps(cfg, args, images_np, flows_np, log, result["devices"]["path_devices"])
    memory = {"rss_after_steps_mib": peak_rss_mib()}
    with tempfile.TemporaryDirectory(prefix="bench_fc2_") as root:
        result["pipeline"] = measure_pipeline(cfg, args, root, result["steps"], log)
    memory["rss_after_pipeline_mib"] = peak_rss_mib()
    result["eval"] = measure_eval(cfg, args, images_np, flows_np, log)
    memory["rss_after_eval_mib"] = peak_rss_mib()
    if not args.no_search:
        result["search"] = measure_search(args, log)
    if args.workers:
        result["data_parallel"] = worker_bench.measure(cfg, args.workers, args.repeats, args.warmup, log)
    result["memory"] = dict(memory, peak_rss_mib=peak_rss_mib(), gpu_peak_mib=gpu_peak_mib())
    result["load_average_end"] = load_average()
    return result


def main(argv=None):
    """Entry point: run the benchmark, print the table, optionally write JSON (bad flags: argparse exit 2)."""
    parser, args = parse_args(argv)
    try:
        cfg = bench_config(args)
    except EdgeFlowError as err:
        parser.error(str(err))
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    result = run(cfg, args, log)
    result["wall_s"] = time.perf_counter() - start
    print()
    print("\n".join(report_lines(result)))
    if args.json:
        atomic_files.write_json_atomic(args.json, result)  # a benchmark killed mid-write leaves no half file
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
