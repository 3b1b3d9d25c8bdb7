"""The step time of data-parallel training (distribute.py) against one process, for bench.py: the
same global batch trained by 1 process and by N worker processes on this machine (loopback
ports), each a child process that builds the run's step, warms it up and times it.

On one machine the workers share its cores (and one CPU's memory bandwidth), so on a CPU the
ratio says what the replication and the all-reduce cost, not what N machines or N GPUs would gain.

    python worker_bench.py --config_json '{...}' --repeats 3 --warmup 1   # one worker (TF_CONFIG from env)
"""
import json
import os
import statistics
import subprocess
import sys
import time

import devices
import errors
import tensorflow_quiet
from tensorflow_quiet import tf

import config
import data_fc2
import distribute
import fair
import train_graph

TOTAL_STEPS = 1000  # only sets the cosine learning-rate schedule of the timed steps


def time_steps(cfg, repeats, warmup):
    """Median seconds of one training step of this process (a worker if cfg asks for several), over
    `repeats` steps after `warmup` untimed ones."""
    hardware = devices.report(log=None)
    cluster = distribute.plan(cfg, hardware)
    data = data_fc2.open_data(cfg)
    graph = tf.Graph()
    with graph.as_default(), distribute.scope(cluster):
        tf.compat.v1.set_random_seed(cfg["seed"])
        if cluster:
            ops = distribute.build_step(cluster, cfg, data, 0, TOTAL_STEPS)[0]
        else:
            images, flows = train_graph.training_input(cfg, data, 0)
            ops = train_graph.build_train_step(cfg, images, flows, TOTAL_STEPS)
        init = tf.compat.v1.global_variables_initializer()
    times = []
    with distribute.session(cluster, graph) as sess:
        sess.run(init, **distribute.run_options(cluster))
        for step in range(warmup + repeats):
            start = time.perf_counter()
            sess.run(ops["train_op"], {ops["arch_paths"]: fair.fair_cycle(cfg["seed"], step)},
                     **distribute.run_options(cluster))
            times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def measure(cfg, workers, repeats, warmup, log):
    """{"step_s": {1: s, N: s}, "ratio"}: the step of the global batch by 1 process, then by
    `workers` worker processes at once (the median of worker 0, which every worker waits for)."""
    step_s = {}
    for count in sorted({1, workers}):
        ports = distribute.free_ports(count)
        child_cfg = dict(cfg, distribute="multi_worker" if count > 1 else "none", experiment_name="bench",
                         synthetic=True, synthetic_train_size=4 * cfg["batch_size"])
        command = [sys.executable, os.path.abspath(__file__), "--config_json", json.dumps(child_cfg),
                   "--repeats", str(repeats), "--warmup", str(warmup)]
        procs = []
        for index in range(count):
            env = tensorflow_quiet.child_environment()
            if count > 1:
                env[distribute.TF_CONFIG] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                                        "task": {"type": "worker", "index": index}})
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outputs = [proc.communicate() for proc in procs]  # stderr: gRPC's retries while the others start
        for index, (proc, (_, err)) in enumerate(zip(procs, outputs)):
            if proc.returncode:
                last = (err.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"benchmark worker {index} of {count} failed (exit {proc.returncode}): {last}")
        step_s[count] = json.loads(outputs[0][0].strip().splitlines()[-1])["step_s"]
        log(f"data parallel: {count} worker{'s' if count > 1 else ''}, global batch {cfg['batch_size']}: "
            f"{step_s[count]:.3f} s per step")
    return {"workers": workers, "step_s": step_s, "ratio": step_s[workers] / step_s[1],
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def report_lines(figure, dev):
    """Figure 7's lines: the two step times, their ratio, and what shares the machine."""
    n, step = figure["workers"], figure["step_s"]
    shared = ("GPUs" if dev["gpus"] else f"{figure['cores']} CPU cores") + " of one machine"
    return ["7. data-parallel training (distribute.py), one global batch per step",
            f"  1 process {step[1]:.3f} s, {n} workers {step[n]:.3f} s per step = {figure['ratio']:.2f} x "
            f"(the {n} workers share the {shared}: this is the cost of replication and all-reduce here, "
            "not the gain of separate machines or GPUs)"]


def main(argv=None):
    """One benchmark worker: time its steps, print {"step_s": median} as the last line."""
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_json", required=True, help="the run's resolved config")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    cfg = config.merge_config(config.defaults(), json.loads(args.config_json), "--config_json")
    print(json.dumps({"step_s": time_steps(cfg, args.repeats, args.warmup)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
