"""Speed and memory benchmark of EdgeFlowNAS on whatever device TensorFlow sees.

One run measures five figures:
  1. the fused fair step (train.build_train_step: 3 paths, one update) against the sum of three
     static single-subnet training steps of the same three archs on the same batch, and their ratio;
  2. the achieved GFLOP/s of the fair step (FLOPS_FORMULA);
  3. the data pipeline (PNG/.flo decode + crop + batch from an FC2 tree on disk) in samples/s,
     against the samples/s the fair step consumes;
  4. evaluation: seconds per subnet (BN recalibration + scoring), the scorer graph built once;
  5. the peak memory of the process (and of the GPU, if one is visible).
Step timings are medians of interleaved repetitions (fused, static 1, static 2, static 3, fused, ...)
after untimed warm-up runs, so machine noise hits every candidate alike.

    python bench.py --batch_size 4 --repeats 3
    python bench.py --batch_size 32 --repeats 2 --warmup 1 --json bench.json
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

import data_fc2
import evaluate
import fair
import supernet
import train

FLOPS_FORMULA = "sum over the 3 paths of count_macs(arch, h, w) x 2 FLOP/MAC x 3 (forward + backward) x batch / seconds"
TOTAL_STEPS = 1000  # only sets the cosine learning-rate schedule of the benchmarked steps
STEP_TARGET = 1.05  # the fused step may cost at most this times the three static steps
PIPELINE_TARGET = 100.0  # the pipeline should deliver this many times what the fair step consumes
FC2_SIZE = (384, 512)  # FlyingChairs2 image size


# ----------------------------------------------------------------------------- setup

def bench_config(args):
    """config.json with the benchmark's batch size, input size and seed, checked like train.py's."""
    cfg = train.read_config_file(train.DEFAULT_CONFIG)
    overrides = {"batch_size": args.batch_size, "input_h": args.h, "input_w": args.w, "seed": args.seed}
    cfg = train.merge_config(cfg, overrides, "bench flags")
    train.check_ranges(cfg)
    return cfg


def device_info():
    """The device TensorFlow computes on: the first GPU's name, or the CPU's model and core count."""
    info = {"tensorflow": tf.__version__, "cpu": cpu_name(), "cpu_cores": os.cpu_count()}
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        info.update(device="GPU", name=details.get("device_name", gpus[0].name),
                    compute_capability=details.get("compute_capability"), gpus=len(gpus))
    else:
        info.update(device="CPU", name=f"{info['cpu']} ({info['cpu_cores']} cores)")
    return info


def cpu_name():
    """The CPU's model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fixed_batch(batch, h, w, seed):
    """One synthetic batch with real motion as numpy: images [B, h, w, 6] in [-1, 1], flows [B, h, w, 2]."""
    arrays = data_fc2.make_synthetic_arrays(batch, h, w, seed)
    images = np.concatenate([data_fc2.normalise(arrays["img0"]), data_fc2.normalise(arrays["img1"])], axis=-1)
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
    """One static subnet's training step: train.build_train_step's loss, weight decay, clip and
    optimizer for a single path built with `arch` as a tuple (only the chosen layers exist).

    train.build_train_step always builds 3 dynamic paths from a placeholder, so this mirrors its
    update for one static path. Returns the train op.
    """
    loss = train.multiscale_loss(supernet.build_flows(images, arch, mode="train"), flows, cfg["loss_weights"])
    variables = tf.compat.v1.trainable_variables()
    loss += cfg["weight_decay"] * tf.add_n([tf.nn.l2_loss(k) for k in supernet.kernel_variables(variables)])
    grads = tf.gradients(loss, variables)
    if cfg["grad_clip_norm"] > 0:
        grads, _ = tf.clip_by_global_norm(grads, cfg["grad_clip_norm"])
    global_step = tf.compat.v1.train.get_or_create_global_step()
    lr = train.cosine_learning_rate(cfg, global_step, total_steps)
    if cfg["optimizer"] == "adam":
        optimizer = tf.compat.v1.train.AdamOptimizer(lr, cfg["adam_beta1"], cfg["adam_beta2"], cfg["adam_epsilon"])
    else:
        optimizer = tf.compat.v1.train.GradientDescentOptimizer(lr)
    return optimizer.apply_gradients(zip(grads, variables), global_step=global_step)


def step_runner(graph, train_op, feed):
    """(session, run): a session on `graph` with its variables initialised, and a no-argument
    function that runs `train_op` once with `feed` ({placeholder name: numpy})."""
    with graph.as_default():
        init = tf.compat.v1.global_variables_initializer()
        feed = {graph.get_tensor_by_name(name): value for name, value in feed.items()}
    graph.finalize()
    sess = tf.compat.v1.Session(graph=graph)
    sess.run(init)
    return sess, lambda: sess.run(train_op, feed)


def fused_runner(cfg, cycle, images_np, flows_np):
    """(session, run) of the fused fair step on the fixed batch, `cycle` fed as its 3 paths."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(cfg["seed"])
        images, flows = input_placeholders(cfg["input_h"], cfg["input_w"])
        ops = train.build_train_step(cfg, images, flows, TOTAL_STEPS)
    feed = {images.name: images_np, flows.name: flows_np, ops["arch_paths"].name: np.array(cycle, np.int32)}
    return step_runner(graph, ops["train_op"], feed)


def static_runner(cfg, arch, images_np, flows_np):
    """(session, run) of one static subnet's training step on the fixed batch."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(cfg["seed"])
        images, flows = input_placeholders(cfg["input_h"], cfg["input_w"])
        train_op = static_train_step(cfg, images, flows, arch, TOTAL_STEPS)
    return step_runner(graph, train_op, {images.name: images_np, flows.name: flows_np})


def time_interleaved(runs, warmup, repeats):
    """Run every function of {name: run} in turn, warmup + repeats rounds; returns
    {name: {"warmup": [s], "timed": [s]}}, so noise hits every candidate alike."""
    times = {name: {"warmup": [], "timed": []} for name in runs}
    for round_index in range(warmup + repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name]["timed" if round_index >= warmup else "warmup"].append(time.perf_counter() - start)
    return times


def step_flops(cycle, batch, h, w):
    """Analytic FLOPs of one fair step: FLOPS_FORMULA without the division."""
    return sum(supernet.count_macs(arch, h, w) for arch in cycle) * 2 * 3 * batch


def measure_steps(cfg, args, images_np, flows_np, log):
    """Figures 1 and 2: the fused fair step against three static steps of the same cycle."""
    h, w = cfg["input_h"], cfg["input_w"]
    cycle = fair.fair_cycle(args.seed, 0)
    names = ["fused"] + [f"static_{p + 1}" for p in range(len(cycle))]
    log(f"building the fused fair step and {len(cycle)} static steps for cycle "
        + " | ".join(supernet.format_arch(a) for a in cycle))
    sessions, runs = [], {}
    for name, make in zip(names, [lambda: fused_runner(cfg, cycle, images_np, flows_np)]
                          + [lambda a=a: static_runner(cfg, a, images_np, flows_np) for a in cycle]):
        sess, runs[name] = make()
        sessions.append(sess)
    log(f"timing {args.warmup} warm-up + {args.repeats} timed rounds of {', '.join(names)} (interleaved)")
    times = time_interleaved(runs, args.warmup, args.repeats)
    for sess in sessions:
        sess.close()
    median = {name: statistics.median(t["timed"]) for name, t in times.items()}
    static_sum = sum(median[n] for n in names[1:])
    flops = step_flops(cycle, args.batch_size, h, w)
    return {"cycle": [supernet.format_arch(a) for a in cycle],
            "gmacs_per_pair": [supernet.count_macs(a, h, w) / 1e9 for a in cycle],
            "times": times, "median_s": median, "static_sum_s": static_sum,
            "ratio_fused_over_static_sum": median["fused"] / static_sum, "target_ratio": STEP_TARGET,
            "ratio_ok": median["fused"] / static_sum <= STEP_TARGET,
            "step_gflop": flops / 1e9, "flops_formula": FLOPS_FORMULA,
            "fused_gflops_per_s": flops / median["fused"] / 1e9, "static_gflops_per_s": flops / static_sum / 1e9,
            "fused_samples_per_s": args.batch_size / median["fused"]}


# ----------------------------------------------------------------------------- 3: data pipeline

def measure_pipeline(cfg, args, root, consumed_per_s, log):
    """Figure 3: samples/s of data_fc2.make_dataset over an FC2 tree written to `root`, eagerly,
    after one batch of warm-up, against `consumed_per_s` (what the fair step takes)."""
    start = time.perf_counter()
    data_fc2.write_synthetic_fc2(root, args.data_samples, seed=args.seed, h=FC2_SIZE[0], w=FC2_SIZE[1])
    samples = data_fc2.list_samples(root, "train", "lists")
    log(f"wrote an FC2 tree of {args.data_samples} samples at {FC2_SIZE[0]}x{FC2_SIZE[1]} in "
        f"{time.perf_counter() - start:.1f}s; reading its {len(samples)} training samples")
    dataset = data_fc2.make_dataset(samples, args.batch_size, (cfg["input_h"], cfg["input_w"]), train=True,
                                    max_flow=cfg["max_flow"], seed=args.seed, shuffle_buffer=cfg["shuffle_buffer"])
    batches = iter(dataset)
    next(batches)
    num_batches = max(1, -(-args.pipeline_samples // args.batch_size))
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    seconds = time.perf_counter() - start
    per_s = num_batches * args.batch_size / seconds
    return {"fc2_samples_on_disk": args.data_samples, "train_samples_read": len(samples),
            "image_size": list(FC2_SIZE), "batches_timed": num_batches, "seconds": seconds,
            "samples_per_s": per_s, "fair_step_consumes_samples_per_s": consumed_per_s,
            "ratio_delivered_over_consumed": per_s / consumed_per_s, "target_ratio": PIPELINE_TARGET,
            "ratio_ok": per_s / consumed_per_s >= PIPELINE_TARGET}


# ----------------------------------------------------------------------------- 4: evaluation

def measure_eval(cfg, args, images_np, flows_np, log):
    """Figure 4: seconds per subnet of evaluate.evaluate on a scorer graph built and finalised
    once; the op count before and after shows that no subnet added to the graph."""
    h, w = cfg["input_h"], cfg["input_w"]
    pool_size = -(-args.eval_subnets // supernet.NUM_OPTIONS) * supernet.NUM_OPTIONS
    pool = fair.build_eval_pool(pool_size, args.seed, h, w)[:args.eval_subnets]
    graph = tf.Graph()
    with graph.as_default():
        images, flows = input_placeholders(h, w)
        scorer = evaluate.build_scorer(images, flows)
        init = tf.compat.v1.global_variables_initializer()
    graph.finalize()
    ops_before = len(graph.get_operations())
    recal_batches = [(images_np, flows_np)] * args.recal_batches
    val_batches = [(images_np, flows_np)] * args.val_batches
    log(f"scoring {len(pool)} subnets ({args.recal_batches} recalibration + {args.val_batches} validation "
        f"batches of {args.batch_size} each) on one finalised graph of {ops_before} ops")
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        start = time.perf_counter()
        evaluate.score_subnet(sess, scorer, pool[0], recal_batches, val_batches)
        warmup_s = time.perf_counter() - start
        result = evaluate.evaluate(sess, scorer, pool, recal_batches, val_batches, h, w)
    per_subnet = [row["seconds"] for row in result["archs"]]
    rest = statistics.median(per_subnet[1:]) if len(per_subnet) > 1 else per_subnet[0]
    return {"subnets": [row["arch"] for row in result["archs"]], "recal_batches": args.recal_batches,
            "val_batches": args.val_batches, "session_warmup_s": warmup_s, "seconds_per_subnet": per_subnet,
            "median_s": statistics.median(per_subnet), "first_s": per_subnet[0], "median_rest_s": rest,
            "first_over_median_rest": per_subnet[0] / rest, "graph_ops_before": ops_before,
            "graph_ops_after": len(graph.get_operations()), "graph_finalized": graph.finalized}


# ----------------------------------------------------------------------------- report

def report_lines(result):
    """The readable table of the five figures."""
    dev, steps, pipe, ev, mem = (result[k] for k in ("device", "steps", "pipeline", "eval", "memory"))
    cfg = result["settings"]
    med = steps["median_s"]
    statics = " + ".join(f"{med[n]:.3f}" for n in med if n != "fused")
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines = [
        f"EdgeFlowNAS benchmark on {dev['device']}: {dev['name']}, TensorFlow {dev['tensorflow']}",
        f"batch {cfg['batch_size']} at {cfg['h']}x{cfg['w']}, {cfg['repeats']} timed rounds after {cfg['warmup']} "
        f"warm-up (medians, interleaved), fair cycle {' | '.join(steps['cycle'])}",
        "",
        f"1 fair step, fused (3 paths, 1 update)   {med['fused']:.3f} s",
        f"  three static single-subnet steps        {statics} = {steps['static_sum_s']:.3f} s",
        f"  ratio fused / sum of static              {steps['ratio_fused_over_static_sum']:.3f} "
        f"(target <= {STEP_TARGET}: {verdict(steps['ratio_ok'])})",
        f"2 achieved GFLOP/s, fused fair step       {steps['fused_gflops_per_s']:.1f} "
        f"({steps['step_gflop']:.1f} GFLOP per step; static steps {steps['static_gflops_per_s']:.1f})",
        f"  FLOPs = {FLOPS_FORMULA}",
        f"3 data pipeline, FC2 PNG/.flo on disk     {pipe['samples_per_s']:.1f} samples/s "
        f"(decode {FC2_SIZE[0]}x{FC2_SIZE[1]} + crop + batch)",
        f"  fair step consumes                       {pipe['fair_step_consumes_samples_per_s']:.2f} samples/s",
        f"  ratio delivered / consumed               {pipe['ratio_delivered_over_consumed']:.1f}x "
        f"(target >= {PIPELINE_TARGET:.0f}x at batch 32: {verdict(pipe['ratio_ok'])} at batch {cfg['batch_size']})",
        f"4 evaluation, recalibration + scoring     {ev['median_s']:.3f} s per subnet (median of {len(ev['subnets'])}; "
        f"{ev['recal_batches']} recal + {ev['val_batches']} val batches)",
        f"  per subnet 1..{len(ev['subnets'])}: " + " ".join(f"{s:.2f}" for s in ev["seconds_per_subnet"]),
        f"  first / median of the rest               {ev['first_over_median_rest']:.2f}; graph ops "
        f"{ev['graph_ops_before']} -> {ev['graph_ops_after']} (finalised); one-time session warm-up "
        f"{ev['session_warmup_s']:.1f} s",
        f"5 peak memory, process RSS                {mem['peak_rss_mib']:.0f} MiB "
        f"(after steps {mem['rss_after_steps_mib']:.0f}, pipeline {mem['rss_after_pipeline_mib']:.0f}, "
        f"eval {mem['rss_after_eval_mib']:.0f})",
    ]
    if mem["gpu_peak_mib"] is not None:
        lines.append(f"  peak GPU memory (TensorFlow allocator)   {mem['gpu_peak_mib']:.0f} MiB")
    return lines


def parse_args(argv):
    """Command-line flags, range-checked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=32, help="batch size of every step, pipeline and scoring")
    parser.add_argument("--h", type=int, default=180, help="input height (multiple of 4)")
    parser.add_argument("--w", type=int, default=240, help="input width (multiple of 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (the first run builds executors)")
    parser.add_argument("--seed", type=int, default=42, help="fair cycle, data and eval pool seed")
    parser.add_argument("--eval_subnets", type=int, default=12, help="subnets of the eval pool to score")
    parser.add_argument("--recal_batches", type=int, default=2, help="BN recalibration batches per subnet")
    parser.add_argument("--val_batches", type=int, default=2, help="validation batches per subnet")
    parser.add_argument("--data_samples", type=int, default=16, help="samples in the FC2 tree written for the pipeline")
    parser.add_argument("--pipeline_samples", type=int, default=512, help="samples to time the pipeline over")
    parser.add_argument("--json", metavar="FILE", help="also write every figure and timing to FILE")
    args = parser.parse_args(argv)
    minimum = {"batch_size": 1, "repeats": 1, "warmup": 0, "seed": 0, "eval_subnets": 1, "recal_batches": 1,
               "val_batches": 1, "data_samples": 5, "pipeline_samples": 1}
    for key, low in minimum.items():
        if getattr(args, key) < low:
            parser.error(f"--{key} {getattr(args, key)} must be >= {low}")
    return parser, args


def run(cfg, args, log):
    """Measure the five figures; returns the full result dict."""
    result = {"device": device_info(),
              "settings": {k: getattr(args, k) for k in ("batch_size", "h", "w", "repeats", "warmup", "seed",
                                                          "eval_subnets", "recal_batches", "val_batches",
                                                          "data_samples", "pipeline_samples")}}
    log(f"device: {result['device']['device']} {result['device']['name']}")
    images_np, flows_np = fixed_batch(args.batch_size, cfg["input_h"], cfg["input_w"], args.seed)
    result["steps"] = measure_steps(cfg, args, images_np, flows_np, log)
    memory = {"rss_after_steps_mib": peak_rss_mib()}
    with tempfile.TemporaryDirectory(prefix="bench_fc2_") as root:
        result["pipeline"] = measure_pipeline(cfg, args, root, result["steps"]["fused_samples_per_s"], log)
    memory["rss_after_pipeline_mib"] = peak_rss_mib()
    result["eval"] = measure_eval(cfg, args, images_np, flows_np, log)
    memory["rss_after_eval_mib"] = peak_rss_mib()
    result["memory"] = dict(memory, peak_rss_mib=peak_rss_mib(), gpu_peak_mib=gpu_peak_mib())
    return result


def main(argv=None):
    """Entry point: run the benchmark, print the table, optionally write JSON; exit 1 on bad input."""
    parser, args = parse_args(argv)
    try:
        cfg = bench_config(args)
    except train.ConfigError as err:
        parser.error(str(err))
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    result = run(cfg, args, log)
    result["wall_s"] = time.perf_counter() - start
    print()
    print("\n".join(report_lines(result)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
