"""A training run, from a resolved config to train_report.json: everything checked, read and built
before anything is written, then one straight loop of epochs (train, evaluate the pool, commit
`best` and `last`), resumable from its last commit, with progress lines that give the time left.
A supernet run trains with fair steps (train_graph.build_train_step); a standalone run trains one
subnet alone (`arch`)."""
import dataclasses
import math
import os
import time
import types

import numpy as np
import devices
import tensorflow_quiet
from tensorflow_quiet import tf

import batches
import ckpt
import config
import data_fc2
import distribute
import fair
import fc2_pipeline
import run_files
import scoring
import supernet
import train_graph
from errors import CheckpointError, DataError, TrainingError, one_line


def format_duration(seconds):
    """1h02m / 3m05s / 12s."""
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def evaluations_left(epoch, cfg):
    """Evaluations still to come while epoch `epoch` trains: its own (if it has one) and every later one."""
    return sum(1 for e in range(epoch, cfg["num_epochs"] + 1) if e % cfg["eval_every"] == 0 or e == cfg["num_epochs"])


def time_left(steps_seconds, evals_left, last_eval_seconds):
    """The progress line's 'time left': the steps to go plus the evaluations to come, each as long
    as the last one measured; before any is measured they are named, not guessed."""
    if not evals_left:
        return f"time left {format_duration(steps_seconds)}"
    plural = "s" if evals_left > 1 else ""
    if last_eval_seconds is None:
        return f"time left {format_duration(steps_seconds)} + {evals_left} evaluation{plural} (not timed yet)"
    total = steps_seconds + evals_left * last_eval_seconds
    return (f"time left {format_duration(total)} (steps {format_duration(steps_seconds)} + "
            f"{evals_left} evaluation{plural} x {format_duration(last_eval_seconds)})")


@dataclasses.dataclass
class RunState:
    """Where a run stands after its last finished epoch: what a checkpoint's meta carries."""
    seed: int
    epoch: int = 0
    global_step: int = 0
    best_metric: float = None  # the lowest pool mean EPE so far (the `best` checkpoint's), None before the first
    best_epoch: int = None
    bad_epochs: int = 0  # evaluations since the last improvement of more than min_delta
    patience_metric: float = None  # the EPE of that improvement: what the next must beat by min_delta
    fairness_counts: dict = dataclasses.field(default_factory=fair.empty_counts)
    digest: str = ""  # chained digest of every path trained (fair.chain_digest)
    wall_time_s: float = 0.0
    stop_reason: str = None

    def to_meta(self):
        """The meta fields of this state (the sampler's as {seed, next_step, digest})."""
        return {"epoch": self.epoch, "global_step": self.global_step, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "patience_metric": self.patience_metric,
                "fairness_counts": self.fairness_counts,
                "sampler": {"seed": self.seed, "next_step": self.global_step, "digest": self.digest},
                "wall_time_s": self.wall_time_s, "stop_reason": self.stop_reason}

    @classmethod
    def from_meta(cls, meta, path):
        """The state a checkpoint's meta holds; CheckpointError naming `path` and the field if a
        field is missing or of the wrong kind (a resume must not run on a guess)."""
        def field(name, check, wanted, parent=meta):
            value = parent.get(name) if isinstance(parent, dict) else None
            if not check(value):
                raise CheckpointError(f"{path}: field '{name}' must be {wanted}, got {value!r}")
            return value
        count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
        finite = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        shape = {b: set(o) for b, o in fair.empty_counts().items()}
        sampler = field("sampler", lambda v: isinstance(v, dict), "an object")
        optional = lambda v: v is None or finite(v)  # noqa: E731
        best = field("best_metric", optional, "a finite number or null")
        # a meta written before patience_metric existed: best and the patience's reference were one value
        patience = field("patience_metric", optional, "a finite number or null") if "patience_metric" in meta else best
        return cls(seed=field("seed", count, "an integer >= 0", sampler),
                   epoch=field("epoch", count, "an integer >= 0"),
                   global_step=field("global_step", count, "an integer >= 0"),
                   best_metric=best,
                   patience_metric=patience,
                   best_epoch=field("best_epoch", lambda v: v is None or count(v), "an epoch or null"),
                   bad_epochs=field("bad_epochs", count, "an integer >= 0"),
                   fairness_counts=field("fairness_counts", lambda v: isinstance(v, dict) and all(
                       isinstance(v.get(b), dict) and set(v[b]) == o and all(map(count, v[b].values()))
                       for b, o in shape.items()), "counts per block and option"),
                   digest=field("digest", lambda v: isinstance(v, str), "a string", sampler),
                   wall_time_s=field("wall_time_s", lambda v: finite(v) and v >= 0, "seconds >= 0"),
                   stop_reason=field("stop_reason", lambda v: v is None or isinstance(v, str), "a string or null"))

    def advance(self, paths):
        """Count one trained step of `paths` (a fair cycle, or the one standalone arch)."""
        self.global_step += 1
        self.fairness_counts = fair.add_counts(self.fairness_counts, paths)
        self.digest = fair.chain_digest(self.digest, paths)

    def record_evaluation(self, mean_epe, epoch, cfg):
        """A new best on any lower EPE (`best` is the lowest scored); early stop after `patience`
        evaluations without an improvement of more than min_delta over the last such improvement. A
        non-finite EPE is an error: it must never become `best`."""
        if not math.isfinite(mean_epe):
            raise TrainingError(f"pool mean EPE is {mean_epe} at epoch {epoch}: stopped; nothing was saved")
        if self.best_metric is None or mean_epe < self.best_metric:
            self.best_metric, self.best_epoch = mean_epe, epoch
        if self.patience_metric is None or mean_epe < self.patience_metric - cfg["early_stop_min_delta"]:
            self.patience_metric, self.bad_epochs = mean_epe, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= cfg["early_stop_patience"]:
            self.stop_reason = "early_stopping"


def checked_step(sess, fetches, feed, run, step):
    """sess.run of training step `step`; a failure of its input or a non-finite loss names the
    sample at fault (data_fc2.find_fault, which reads the step's samples again) when one is, else the step."""
    cfg = run.cfg

    def fault():
        samples = fc2_pipeline.training_batch_samples(run.data["train"], cfg["seed"], [step], cfg["batch_size"])
        return data_fc2.find_fault(samples, (cfg["input_h"], cfg["input_w"]))
    try:
        with distribute.held_back(run.cluster):
            out = sess.run(fetches, feed, **distribute.run_options(run.cluster))
    except tf.errors.OpError as err:
        raise (distribute.lost_peer(run.cluster, err, step) or fault()
               or DataError(f"training batch {step}: {one_line(err)}")) from None
    if not np.isfinite(out["loss"]):
        raise fault() or TrainingError(f"loss is {out['loss']} at step {step}: stopped; resume from the last "
                                          f"checkpoint")
    return out


def train_step(sess, run, state):
    """Train step number state.global_step (one fair cycle, or one standalone update); advance the state."""
    fetches = {k: run.ops[k] for k in ("train_op", "loss", "lr", "clipped", "grad_norm", "distill") if k in run.ops}
    if run.standalone:
        paths, feed = [run.pool[0]], None
    else:
        paths = fair.fair_cycle(run.cfg["seed"], state.global_step)
        feed = {run.ops["arch_paths"]: paths}
    out = checked_step(sess, fetches, feed, run, state.global_step)
    state.advance(paths)
    return out


def init_source(run_dir, variables):
    """The meta of the `best` checkpoint of the supernet run at `run_dir` that a standalone subnet's
    `variables` inherit, every one of them checked to be there with its shape. The network is fully
    convolutional, so any input size fits."""
    meta = ckpt.load_meta(run_dir, "best")
    ckpt.check_compatible(meta, *meta.get("search_space", {}).get("input_size", (None, None)), meta["prefix"])
    ckpt.check_variables(meta["prefix"], variables)
    return meta


def init_from_run(sess, variables, meta):
    """Set a standalone subnet's `variables` from a supernet's checkpoint (init_source); returns a
    line for the log."""
    try:
        tf.compat.v1.train.Saver(variables).restore(sess, meta["prefix"])
    except tf.errors.OpError as err:
        raise CheckpointError(f"cannot initialise from {meta['prefix']}: {one_line(err)}") from None
    return (f"initialised {len(variables)} variables from {meta['prefix']} "
            f"(epoch {meta['epoch']}, step {meta['global_step']})")


def plan_lines(cfg, data, steps_per_epoch, pool, coverage, supernet_params):
    """What a run will do, for --dry_run and the top of train.log."""
    h, w = cfg["input_h"], cfg["input_w"]
    total = steps_per_epoch * cfg["num_epochs"]
    return [data["reason"],
            f"data: {data['data_source']}, train {data['counts']['train']} / val {data['counts']['val']} samples",
            f"steps: {steps_per_epoch} per epoch x {cfg['num_epochs']} epochs = {total} fair steps "
            f"({3 * total} subnet passes), batch {cfg['batch_size']} at {h}x{w}",
            f"supernet parameters: {supernet_params:,}; subnets {supernet.count_params((0,) * 9, h, w):,} .. "
            f"{supernet.count_params((2,) * 9, h, w):,}",
            *distillation_lines(cfg),
            f"eval pool ({len(pool)}, coverage {'ok' if coverage['ok'] else 'FAILED'}): "
            + " ".join(supernet.format_arch(a) for a in pool)]


def distillation_lines(cfg):
    """The plan's line on in-place distillation, when it is on."""
    if cfg["distill_weight"] <= 0:
        return []
    return [f"distillation: weight {cfg['distill_weight']:g}, each path also fits the flows of the largest path "
            f"{supernet.format_arch(train_graph.largest_arch())} (one more forward pass per step, trains nothing)"]


def standalone_plan_lines(cfg, data, steps_per_epoch, graph_params):
    """What a standalone run will do, for --dry_run and the top of train.log."""
    h, w = cfg["input_h"], cfg["input_w"]
    arch = supernet.parse_arch(cfg["arch"])
    total = steps_per_epoch * cfg["num_epochs"]
    return [data["reason"],
            f"data: {data['data_source']}, train {data['counts']['train']} / val {data['counts']['val']} samples",
            f"mode standalone: subnet {cfg['arch']} alone, {graph_params:,} parameters "
            f"({supernet.count_macs(arch, h, w) / 1e9:.3f} GMAC at {h}x{w}), "
            + (f"initialised from {cfg['init_from']} (best)" if cfg["init_from"] else "from scratch"),
            f"steps: {steps_per_epoch} per epoch x {cfg['num_epochs']} epochs = {total} updates, "
            f"batch {cfg['batch_size']} at {h}x{w}"]


class Clock:
    """Wall time of the run (earlier invocations included) and the step rate, evaluations apart."""

    def __init__(self, state):
        self.before, self.start, self.first_step = state.wall_time_s, time.time(), state.global_step
        self.eval_spent, self.last_eval_s = 0.0, None

    def wall(self):
        """Seconds the run has trained, earlier invocations included."""
        return self.before + time.time() - self.start

    def rate(self, step):
        """Steps per second of this invocation, evaluation time left out."""
        return (step - self.first_step) / max(time.time() - self.start - self.eval_spent, 1e-9)

    def evaluated(self, seconds):
        """Count an evaluation's seconds apart from the steps."""
        self.eval_spent, self.last_eval_s = self.eval_spent + seconds, seconds


def train_epoch(sess, run, state, writer, clock, epoch):
    """steps_per_epoch training steps with a progress line every log_every; returns the epoch's figures."""
    cfg, total = run.cfg, run.steps_per_epoch * run.cfg["num_epochs"]
    losses, distills, clips = [], [], 0
    for i in range(run.steps_per_epoch):
        out = train_step(sess, run, state)
        losses.append(float(out["loss"]))
        distills += [float(out["distill"])] if "distill" in out else []
        clips += bool(out["clipped"])
        if state.global_step % cfg["log_every"] == 0 or i == run.steps_per_epoch - 1:
            rate = clock.rate(state.global_step)
            distilled = f" (distillation {np.mean(distills[-cfg['log_every']:]):.4f})" if distills else ""
            writer.log(f"epoch {epoch}/{cfg['num_epochs']} step {state.global_step}/{total} "
                       f"loss {np.mean(losses[-cfg['log_every']:]):.4f}{distilled} lr {out['lr']:.3g} "
                       f"grad_norm {out['grad_norm']:.3g} clipped {clips}/{i + 1} {rate:.2f} steps/s "
                       + time_left((total - state.global_step) / max(rate, 1e-9), evaluations_left(epoch, cfg),
                                   clock.last_eval_s))
            writer.training(state.global_step, out, clips / (i + 1))
    return {"train_loss": np.mean(losses), "clip_rate": clips / run.steps_per_epoch, "lr": out["lr"]}


def evaluate_epoch(sess, run, state, writer, clock, epoch, figures):
    """Score the pool with BN recalibration, update early stopping, write the history row."""
    cfg = run.cfg
    writer.log(f"evaluating {len(run.pool)} subnets (BN recalibration over {len(run.recal_batches)} batches each)")
    h, w = cfg["input_h"], cfg["input_w"]
    result = scoring.evaluate(sess, run.scorer, run.pool, run.recal_batches, run.val_batches, h, w, log=writer.log)
    clock.evaluated(result["seconds"])
    state.record_evaluation(result["mean_epe"], epoch, cfg)
    gap = fair.fairness_gap(state.fairness_counts)
    writer.evaluation(state.global_step, dict(
        figures, epoch=epoch, global_step=state.global_step, mean_epe=result["mean_epe"], std_epe=result["std_epe"],
        zero_flow_epe=result["zero_flow_epe"], best_epe=state.best_metric, bad_epochs=state.bad_epochs,
        fairness_gap=gap, eval_seconds=result["seconds"], wall_time_s=clock.wall()), result, run.val_batches)
    fairness = "" if run.standalone else f", fairness gap {gap}"  # a standalone run trains one arch: no fairness
    writer.log(f"epoch {epoch}: pool mean EPE {result['mean_epe']:.4f} (zero-flow {result['zero_flow_epe']:.4f}), "
               f"best {state.best_metric:.4f} at epoch {state.best_epoch}, evaluations without an improvement of "
               f"more than {cfg['early_stop_min_delta']:g}: {state.bad_epochs}/{cfg['early_stop_patience']}{fairness}")
    if state.stop_reason == "early_stopping":
        writer.log(f"early stopping: no improvement of more than {cfg['early_stop_min_delta']} "
                   f"in {cfg['early_stop_patience']} evaluations")


class Run(types.SimpleNamespace):
    """What one invocation trains: cfg, data, pool, coverage, steps_per_epoch, standalone, meta
    (of the checkpoint resumed, or None), history columns, the graph and its ops, scorer, saver,
    init, init_source (the meta of the checkpoint --init_from inherits, or None), plan."""


def prepare(cfg, run_dir, hardware, cluster=None, *, resume, dry_run):
    """Everything checked, read and built before anything is written (cheapest first): data (every
    file's header), eval pool, the checkpoint to `resume` (meta checked), history, the scoring
    batches (not for a `dry_run`), the graph (its step replicated over the `cluster`'s replicas if
    there is one)."""
    h, w = cfg["input_h"], cfg["input_w"]
    data = data_fc2.open_data(cfg)
    run = Run(cfg=cfg, data=data, standalone=bool(cfg["arch"]), cluster=cluster,
              steps_per_epoch=cfg["steps_per_epoch"] or max(1, data["counts"]["train"] // cfg["batch_size"]))
    run.pool = ([supernet.parse_arch(cfg["arch"])] if run.standalone
                else fair.build_eval_pool(cfg["eval_pool_size"], cfg["seed"], h, w))
    # a standalone run evaluates its own arch only: no pool whose coverage could be checked
    run.coverage = {"ok": None, "problems": []} if run.standalone else fair.pool_coverage(run.pool, h, w)
    run.meta = ckpt.load_meta(run_dir, "last") if resume else None
    meta_path = os.path.join(ckpt.checkpoint_dir(run_dir, "last"), ckpt.META_NAME)
    run.state = RunState.from_meta(run.meta, meta_path) if run.meta else RunState(seed=cfg["seed"])
    if run.meta:
        config.check_resumed(cfg, run.meta.get("config", {}), meta_path)
        ckpt.check_compatible(run.meta, h, w, run.meta["prefix"])
    run.columns = run_files.history_columns(run.pool)
    run_files.read_history(os.path.join(run_dir, "eval_history.csv"), run.columns)
    if not dry_run:
        run.recal_batches, run.val_batches = batches.scoring_batches(cfg, data)
    total_steps = run.steps_per_epoch * cfg["num_epochs"]
    run.graph = tf.Graph()
    with run.graph.as_default(), distribute.scope(cluster):
        tf.compat.v1.set_random_seed(cfg["seed"])
        if cluster:
            run.ops, images, flows = distribute.build_step(cluster, cfg, data, run.state.global_step, total_steps,
                                                           run.pool[0] if run.standalone else None)
        else:
            images, flows = train_graph.training_input(cfg, data, run.state.global_step)
            run.ops = (train_graph.build_standalone_step(cfg, images, flows, total_steps, run.pool[0])
                       if run.standalone
                       else train_graph.build_train_step(cfg, images, flows, total_steps, hardware["path_devices"]))
        run.scorer = scoring.build_scorer(images, flows, static_arch=run.pool[0] if run.standalone else None)
        run.saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables(), max_to_keep=None)
        run.init = tf.compat.v1.global_variables_initializer()
    # the checkpoint a fresh standalone run inherits: checked before any work, a dry run's too
    fresh_inherit = cfg["init_from"] and not run.meta  # a resumed run has its own weights
    run.init_source = init_source(cfg["init_from"], run.ops["model_variables"]) if fresh_inherit else None
    params = supernet.graph_param_count(run.graph)
    run.plan = (standalone_plan_lines(cfg, data, run.steps_per_epoch, params) if run.standalone
                else plan_lines(cfg, data, run.steps_per_epoch, run.pool, run.coverage, params))
    return run


def start_session(sess, run, run_dir):
    """Initialise the variables, then restore the checkpoint resumed (every variable's shape
    checked) or inherit a supernet's weights (--init_from); returns lines for the log."""
    with distribute.held_back(run.cluster):  # mirrored variables wait for every worker
        sess.run(run.init, **distribute.run_options(run.cluster))
    if run.meta:
        ckpt.restore(sess, run.saver, run_dir, "last", run.cfg["input_h"], run.cfg["input_w"])
        return [f"restored epoch {run.state.epoch}, step {run.state.global_step} from {run.meta['prefix']}"]
    if run.init_source:
        return [init_from_run(sess, run.ops["model_variables"], run.init_source)]
    return []


def train(cfg, run_dir, *, resume, dry_run, allow_cpu):
    """Dry-run plan, or train (fresh or `resume`d) to the end or early stop; returns train_report.
    allow_cpu: train on the CPU even where nvidia-smi lists a GPU that TensorFlow cannot use."""
    wall_start = time.time()
    hardware = devices.report(cfg["devices"], allow_cpu=allow_cpu, paths=fair.paths_per_cycle())
    cluster = distribute.plan(cfg, hardware)
    run = prepare(cfg, run_dir, hardware, cluster, resume=resume, dry_run=dry_run)
    if cluster:
        run.plan.append(cluster.describe(cfg["batch_size"] // cluster.replicas))
    if dry_run:
        print("dry run: nothing will be trained or written")
        print("\n".join(run.plan))
        return None
    state, meta_fields = run.state, run_meta_fields(run)
    writer = distribute.run_writer(cluster, run_dir, run.columns)
    with distribute.session(cluster, run.graph) as sess:
        restored = start_session(sess, run, run_dir)
        if writer.writes_files:  # only once the checkpoint restored: a refused resume removes nothing
            ckpt.remove_temp_files(run_dir)
        writer.start(cfg, run.pool, run.coverage, state, [("resuming " if run.meta else "starting ") + run_dir]
                     + run.plan + restored)
        writer.log(hardware["summary"], echo=False)
        if state.stop_reason == "early_stopping":
            writer.log(f"this run stopped early at epoch {state.epoch}: nothing more to train")
        train_epochs(sess, run, writer, meta_fields)
    report = train_report(run, run_dir, hardware, time.time() - wall_start)
    writer.finish(report)
    return report


def train_epochs(sess, run, writer, meta_fields):
    """The epochs left: train one, evaluate the pool every eval_every epochs and after the last,
    commit it (best if it improved, last, and the counts of last); stop early when told."""
    cfg, state = run.cfg, run.state
    clock = Clock(state)
    for epoch in range(state.epoch + 1, cfg["num_epochs"] + 1):
        if state.stop_reason == "early_stopping":
            break
        figures = train_epoch(sess, run, state, writer, clock, epoch)
        state.epoch = epoch
        if epoch % cfg["eval_every"] == 0 or epoch == cfg["num_epochs"]:
            evaluate_epoch(sess, run, state, writer, clock, epoch, figures)
        state.wall_time_s = clock.wall()
        writer.checkpoint(sess, run.saver, state, meta_fields, best=state.best_epoch == epoch)
        if run.cluster:  # equal digests on every worker: the replicas hold the same weights
            writer.log(f"step {state.global_step}: variables digest {distribute.variables_digest(sess)}")


def run_meta_fields(run):
    """What every checkpoint's meta carries besides the run state."""
    cfg = run.cfg
    return {"data_source": run.data["data_source"], "config": cfg, "arch": cfg["arch"],
            "search_space": ckpt.search_space_signature(cfg["input_h"], cfg["input_w"]),
            "mode": "standalone" if run.standalone else "supernet"}


def train_report(run, run_dir, hardware, invocation_s):
    """train_report.json: how the run ended and where its checkpoints are."""
    cfg, state = run.cfg, run.state
    return {"experiment": cfg["experiment_name"], "run_dir": run_dir, "epochs_finished": state.epoch,
            "mode": "standalone" if run.standalone else "supernet", "arch": cfg["arch"],
            "num_epochs": cfg["num_epochs"], "global_step": state.global_step,
            "stop_reason": state.stop_reason or "completed", "best_metric": state.best_metric,
            "best_epoch": state.best_epoch, "final_fairness_gap": fair.fairness_gap(state.fairness_counts),
            "fairness_counts": state.fairness_counts, "path_sequence_digest": state.digest,
            "eval_pool_coverage_ok": run.coverage["ok"], "data_source": run.data["data_source"],
            "data_parallel": distribute.summary(run.cluster),
            "data_reason": run.data["reason"], "devices": hardware,
            "checkpoints": {k: os.path.join(run_dir, "checkpoints", k) for k in ckpt.CHECKPOINT_KINDS},
            "wall_time_s": state.wall_time_s, "this_invocation_s": invocation_s}
