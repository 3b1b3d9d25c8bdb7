"""Data-parallel training on TensorFlow's own distributed engine (tf.distribute): replicas of the
whole training step (a fair step of three paths, or one subnet alone), each on its share of the
global batch, their gradients averaged by one all-reduce and applied once, by every replica alike.

The config key `distribute` chooses:
- "none" (the default): one process, the step of train_graph as it always was; nothing here is built.
- "mirrored": MirroredStrategy over this machine's devices, `replicas` of them: GPUs (0: every GPU
  TensorFlow sees) or, without a GPU, logical CPU devices sharing the cores.
- "multi_worker": MultiWorkerMirroredStrategy over the workers TF_CONFIG lists, one process per
  worker (each replicates over the GPUs it sees, or its CPU); worker 0 is the chief. Each worker
  runs a tf.distribute.Server and its session on that server.

What a step computes: training batch `step` of `batch_size` samples (the batch one process would
read) is cut into one share per replica (fc2_pipeline.make_dataset's shard). Each replica runs the whole
fair step on its share; batch norm normalises over the replica's own share (unsynchronised, as in
the published work's multi-GPU training), so with several replicas the paths see smaller batches'
statistics than one process on the whole batch. The replicas' gradients (and losses) are averaged
by one all-reduce, the global-norm clip sees the average's norm, and the optimizer applies it once
on every replica: the update one process would make from the mean of the shares' gradients.
Every cross-process byte moves through tf.distribute's collectives.

The chief alone writes (checkpoints, logs, history, TensorBoard); every worker evaluates the pool
too (the same work on the same weights, so the workers keep identical BN statistics and take the
same early-stopping decision) and logs a digest of its variables at every commit. A resumed run
restores the chief's `last` checkpoint on every worker: the run folder must be visible to all
(a shared filesystem).
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import time

import numpy as np
import devices
import tensorflow_quiet
from tensorflow_quiet import tf

import fc2_pipeline
import run_files
import train_graph
from errors import ConfigError, TrainingError, one_line

TF_CONFIG = "TF_CONFIG"
# what a collective does when a peer is gone: waits to the step's deadline, or fails at once
def _peer_errors():
    """TensorFlow's errors that say a peer worker is gone (a function: tf loads on first use)."""
    return (tf.errors.DeadlineExceededError, tf.errors.UnavailableError, tf.errors.AbortedError,
            tf.errors.CancelledError)
_PROBE_SECONDS = 5.0


@dataclasses.dataclass
class Cluster:
    """Where the replicas of one run are: the mode, the replica count, this process's worker index
    and the workers' addresses (multi_worker), the local devices (mirrored), the step deadline."""
    mode: str
    replicas: int
    index: int = 0
    workers: tuple = ()
    local_devices: tuple = ()
    timeout_s: float = 600.0
    strategy: object = None
    server: object = None
    config: object = None

    @property
    def is_chief(self):
        return self.index == 0

    def describe(self, share):
        """The line train.log and every worker's output start with."""
        where = (f"worker {self.index} of {len(self.workers)} ({', '.join(self.workers)})" if self.workers
                 else "one process on " + ", ".join(d.replace("/device:", "") for d in self.local_devices))
        return (f"data parallel ({self.mode}): {self.replicas} replicas of {share} samples each, {where}; "
                f"batch norm over each replica's share; a peer silent for {self.timeout_s:g} s stops the run")


def read_tf_config(text):
    """(worker addresses, this task's index) from TF_CONFIG's JSON, or ConfigError naming the field."""
    try:
        spec = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"{TF_CONFIG}: not valid JSON: {err}") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or set(cluster) != {"worker"}:
        raise ConfigError(f"{TF_CONFIG}: field 'cluster' must be {{\"worker\": [\"host:port\", ...]}} "
                          f"(worker 0 is the chief), got {cluster!r}")
    workers = cluster["worker"]
    if not isinstance(workers, list) or not workers or not all(map(_is_address, workers)):
        raise ConfigError(f"{TF_CONFIG}: field 'cluster.worker' must be a list of host:port, got {workers!r}")
    if len(set(workers)) != len(workers):
        raise ConfigError(f"{TF_CONFIG}: field 'cluster.worker' lists an address twice: {workers}")
    index = task.get("index") if isinstance(task, dict) else None
    if (not isinstance(task, dict) or task.get("type") != "worker" or not isinstance(index, int)
            or isinstance(index, bool) or not 0 <= index < len(workers)):
        raise ConfigError(f"{TF_CONFIG}: field 'task' must be {{\"type\": \"worker\", "
                          f"\"index\": 0..{len(workers) - 1}}}, got {task!r}")
    return tuple(workers), index


def _is_address(text):
    host, _, port = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def writes_run_files():
    """False for a worker that TF_CONFIG names and that is not the chief: it reads the run, never
    writes it (so it takes no writer lock)."""
    text = os.environ.get(TF_CONFIG)
    return not text or read_tf_config(text)[1] == 0


def free_ports(count, host="127.0.0.1"):
    """`count` ports nobody listens on at `host`: bound to port 0 (the kernel picks), read, released."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind((host, 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _check_port_free(address):
    """ConfigError unless this worker's port can be listened on (tf.distribute.Server would abort)."""
    port = int(address.rpartition(":")[2])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as err:
            raise ConfigError(f"{TF_CONFIG}: this worker's address {address}: port {port} cannot be listened on "
                              f"({err.strerror}): in use by another process?") from None


def plan(cfg, hardware):
    """The Cluster of a run, or None for one process (distribute "none"); every check (TF_CONFIG,
    this worker's port, the batch that must divide over the replicas) before any work."""
    mode, tf_config = cfg["distribute"], os.environ.get(TF_CONFIG)
    if mode != "multi_worker" and tf_config and not writes_run_files():
        raise ConfigError(f"{TF_CONFIG} names a worker that is not the chief but --distribute is {mode}: "
                          "set --distribute multi_worker, or unset TF_CONFIG")
    if mode == "none":
        return None
    if cfg["devices"] > 1:
        raise ConfigError(f"--devices {cfg['devices']} with --distribute {mode}: a replica runs on one device; "
                          "use more replicas instead")
    if mode == "mirrored":
        cluster = _mirrored(cfg, hardware)
    else:
        cluster = _multi_worker(cfg, hardware, tf_config)
    if cfg["batch_size"] % cluster.replicas:
        raise ConfigError(f"--batch_size {cfg['batch_size']} (the global batch) does not divide over "
                          f"{cluster.replicas} replicas")
    return cluster


def _mirrored(cfg, hardware):
    gpus, count = len(hardware["gpus"]), cfg["replicas"]
    if gpus:
        if count > gpus:
            raise ConfigError(f"--replicas {count}: TensorFlow sees {gpus} GPUs")
        local = tuple(f"/device:GPU:{i}" for i in range(count or gpus))
    elif count < 1:
        raise ConfigError("--distribute mirrored without a GPU needs --replicas N (logical CPU devices)")
    else:
        local = tuple(devices.logical_cpus(count, "--replicas"))
    return Cluster("mirrored", len(local), local_devices=local, timeout_s=cfg["worker_timeout_s"])


def _multi_worker(cfg, hardware, tf_config):
    if not tf_config:
        raise ConfigError(f"--distribute multi_worker needs {TF_CONFIG} (the workers and this one's index)")
    if cfg["replicas"]:
        raise ConfigError("--replicas applies to --distribute mirrored; a worker replicates over the GPUs it "
                          "sees (CUDA_VISIBLE_DEVICES)")
    workers, index = read_tf_config(tf_config)
    _check_port_free(workers[index])
    return Cluster("multi_worker", len(workers) * max(len(hardware["gpus"]), 1), index=index, workers=workers,
                   timeout_s=cfg["worker_timeout_s"])


def summary(cluster):
    """What train_report.json says of the replicas (None for one process)."""
    if cluster is None:
        return None
    return {"mode": cluster.mode, "replicas": cluster.replicas, "workers": list(cluster.workers),
            "local_devices": list(cluster.local_devices), "worker_timeout_s": cluster.timeout_s}


def scope(cluster):
    """The strategy's scope in the current graph (its variables are mirrored), creating the
    strategy there; a no-op without a cluster."""
    if cluster is None:
        return contextlib.nullcontext()
    if cluster.mode == "mirrored":
        cluster.strategy = tf.distribute.MirroredStrategy(list(cluster.local_devices))
    else:
        cluster.strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver())
    cluster.config = cluster.strategy.update_config_proto(tensorflow_quiet.session_config())
    return cluster.strategy.scope()


def _host(cluster):
    """The CPU that reads this process's data."""
    return f"/job:worker/replica:0/task:{cluster.index}/device:CPU:0" if cluster.workers else "/device:CPU:0"


def build_step(cluster, cfg, data, start_step, total_steps, standalone_arch=None):
    """The replicated training step, in the current graph inside scope(cluster): (ops, images,
    flows). ops has train_graph's keys (arch_paths to feed for a fair step, model_variables for a
    standalone one); loss, lr, grad_norm and clipped are the first local replica's, the same on
    every replica after the all-reduce. images and flows are placeholders for the scorer."""
    strategy, h, w = cluster.strategy, cfg["input_h"], cfg["input_w"]
    arch_paths = None if standalone_arch else train_graph.arch_paths_placeholder()
    model_variables = []

    def replica_input(context):
        with tf.device(_host(cluster)):
            dataset = fc2_pipeline.make_dataset(
                data["train"], cfg["batch_size"], (h, w), train=True, max_flow=cfg["max_flow"], seed=cfg["seed"],
                start_step=start_step, shard=(context.replica_id_in_sync_group, context.num_replicas_in_sync))
            return tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()

    @tf.autograph.experimental.do_not_convert  # graph code as written: no control flow to convert
    def replica_step(batch):
        images, flows = batch
        loss = (train_graph.standalone_loss(cfg, images, flows, standalone_arch) if standalone_arch
                else train_graph.fair_step_loss(cfg, images, flows, arch_paths))
        model_variables[:] = model_variables or tf.compat.v1.global_variables()
        ops = train_graph.build_update(cfg, loss, total_steps, _mean_over_replicas)
        return {k: ops[k] for k in ("train_op", "loss", "lr", "grad_norm", "clipped")}

    inputs = strategy.experimental_distribute_values_from_function(replica_input)
    per_replica = strategy.extended.call_for_each_replica(replica_step, args=(inputs,))
    ops = {k: strategy.experimental_local_results(v)[0] for k, v in per_replica.items() if k != "train_op"}
    ops.update(train_op=strategy.group(per_replica["train_op"]), arch_paths=arch_paths, arch=standalone_arch,
               model_variables=list(model_variables))
    images = tf.compat.v1.placeholder(tf.float32, [None, h, w, 6], "score_images")
    flows = tf.compat.v1.placeholder(tf.float32, [None, h, w, 2], "score_flows")
    return ops, images, flows


def _mean_over_replicas(tensors):
    """The means of `tensors` over every replica, in one batched all-reduce. Through merge_call
    rather than ReplicaContext.all_reduce, whose gradient wrapper (not needed: these are gradients
    already) looks up each replica's variable copies by a name the graph does not hold."""
    def batch_mean(strategy, *values):
        return strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.MEAN, [(v, v) for v in values])
    return list(tf.distribute.get_replica_context().merge_call(batch_mean, args=tensors))


def session(cluster, graph):
    """The run's session: the project's session config; for several workers this worker's server
    started (its port was checked free) and the session on it."""
    if cluster is None:
        return tf.compat.v1.Session(graph=graph, config=tensorflow_quiet.session_config())
    if not cluster.workers:
        return tf.compat.v1.Session(graph=graph, config=cluster.config)
    spec = tf.train.ClusterSpec({"worker": list(cluster.workers)})
    cluster.server = tf.distribute.Server(spec, job_name="worker", task_index=cluster.index, config=cluster.config)
    return tf.compat.v1.Session(cluster.server.target, graph=graph, config=cluster.config)


def run_options(cluster):
    """sess.run's keyword arguments for a run that waits on other workers: their deadline."""
    if cluster is None or not cluster.workers:
        return {}
    return {"options": tf.compat.v1.RunOptions(timeout_in_ms=int(cluster.timeout_s * 1000))}


def held_back(cluster):
    """Around a sess.run that waits on other workers: what TensorFlow's collectives write to stderr
    when a peer is gone (gRPC and ring-reduce errors) is held back, as at start-up (tensorflow_quiet.quiet):
    the run says it in one line (lost_peer)."""
    return tensorflow_quiet.quiet(replay=False) if cluster and cluster.workers else contextlib.nullcontext()


def lost_peer(cluster, err, step):
    """The TrainingError that names the worker gone when `err` (a failed sess.run) is a collective
    left waiting or broken by a peer; None for any other failure."""
    if cluster is None or not cluster.workers or not isinstance(err, _peer_errors()):
        return None
    gone = [f"worker {i} ({address})" for i, address in enumerate(cluster.workers)
            if i != cluster.index and not _answers_twice(address)]
    what = (f"{', '.join(gone)} is gone" if gone else
            f"no answer from the other workers within worker_timeout_s {cluster.timeout_s:g} s")
    return TrainingError(f"worker {cluster.index}: {what} at step {step} ({type(err).__name__}: "
                         f"{one_line(err)[:120]}); every worker stops: rerun them all with --resume")


def _answers_twice(address, wait_s=1.0):
    """True if `address` answers now and again `wait_s` later: a worker killed a moment ago may still
    hold its port open while the kernel tears it down."""
    if not _answers(address):
        return False
    time.sleep(wait_s)
    return _answers(address)


def _answers(address):
    """True if something listens at `address` (a worker's server); a connect only, no bytes sent."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=_PROBE_SECONDS):
            return True
    except OSError:
        return False


def variables_digest(sess):
    """A digest of every variable's bytes (names sorted): equal digests, identical weights."""
    variables = {v.op.name: v for v in sess.graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)}
    values = sess.run(variables)
    digest = hashlib.sha256()
    for name in sorted(values):
        digest.update(name.encode() + np.ascontiguousarray(values[name]).tobytes())
    return digest.hexdigest()[:16]


def run_writer(cluster, run_dir, columns):
    """The chief's (or a single process's) run_files.RunWriter; a WorkerLog for any other worker."""
    return WorkerLog(cluster) if cluster and not cluster.is_chief else run_files.RunWriter(run_dir, columns)


class WorkerLog:
    """What a worker other than the chief has instead of run_files.RunWriter: its log lines on its
    own output, prefixed by its index; it writes no file."""
    writes_files = False

    def __init__(self, cluster):
        self.prefix = f"worker {cluster.index}: "

    def log(self, message, echo=True):
        print(self.prefix + message, flush=True)

    def start(self, cfg, pool, coverage, state, lines):
        for line in lines:
            self.log(line)

    def training(self, step, out, clip_rate):
        """No TensorBoard: the chief's."""

    def evaluation(self, step, row, result, val_batches):
        """No history: the chief's."""

    def checkpoint(self, sess, saver, state, meta_fields, best):
        """No checkpoint: the chief's."""

    def finish(self, report):
        self.log(f"done: {report['stop_reason']} after {report['epochs_finished']} epochs")
