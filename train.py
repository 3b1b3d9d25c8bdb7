"""Train the EdgeFlowNAS supernet with FairNAS strict fairness.

One step is one fair cycle on one batch: the three paths' losses are averaged, so one gradient
of that mean is exactly the mean of the three per-path gradients, and one optimizer update
applies it, all in one session.run. `config.json` holds every default; every key is also a flag.

    python train.py --config config.json --dry_run
    python train.py --config config.json --num_epochs 1 --steps_per_epoch 2 --batch_size 2 --fast_mode
    python train.py --resume --num_epochs 2 --steps_per_epoch 2 --batch_size 2 --fast_mode
    python train.py --arch 0,1,2,0,1,2,0,1,2 --init_from outputs/demo   # one subnet alone (standalone)
"""
import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
import types

import numpy as np
import devices  # before tensorflow: quietens its start-up (see devices.py)
import tensorflow as tf

import ckpt
import data_fc2
import evaluate
import fair
import supernet

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "config.json")
CHOICES = {"optimizer": ("adam", "sgd"), "data_layout": ("auto", "lists", "folders")}
POSITIVE = ("input_h", "input_w", "batch_size", "num_epochs", "eval_every", "eval_pool_size", "bn_recal_batches",
            "early_stop_patience", "log_every", "synthetic_train_size", "synthetic_val_size",
            "devices")
NON_NEGATIVE = ("steps_per_epoch", "eval_batches", "learning_rate", "weight_decay", "grad_clip_norm",
                "early_stop_min_delta", "max_flow", "seed")


# ----------------------------------------------------------------------------- config

def check_ranges(cfg):
    """Raise ckpt.ConfigError for values of the right type but outside their range."""
    for key in POSITIVE:
        if cfg[key] <= 0:
            raise ckpt.ConfigError(f"config key '{key}' must be > 0, got {cfg[key]}")
    for key in NON_NEGATIVE:
        if cfg[key] < 0:
            raise ckpt.ConfigError(f"config key '{key}' must be >= 0, got {cfg[key]}")
    if cfg["devices"] > devices.MAX_PATH_DEVICES:
        raise ckpt.ConfigError(f"config key 'devices' must be at most {devices.MAX_PATH_DEVICES} (one per path), "
                          f"got {cfg['devices']}")
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise ckpt.ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}, got {cfg[key]!r}")
    try:
        supernet.check_input_size(cfg["input_h"], cfg["input_w"])
    except ValueError as err:
        raise ckpt.ConfigError(f"config: {err}") from None
    if cfg["eval_pool_size"] % supernet.NUM_OPTIONS:
        raise ckpt.ConfigError(f"config key 'eval_pool_size' must be a multiple of 3 (whole fair cycles), "
                               f"got {cfg['eval_pool_size']}")
    for key in ("adam_beta1", "adam_beta2"):
        if not 0 <= cfg[key] < 1:
            raise ckpt.ConfigError(f"config key '{key}' must be in [0, 1), got {cfg[key]}")
    if cfg["adam_epsilon"] <= 0:
        raise ckpt.ConfigError(f"config key 'adam_epsilon' must be > 0, got {cfg['adam_epsilon']}")
    if min(cfg["loss_weights"]) < 0 or max(cfg["loss_weights"]) <= 0:
        raise ckpt.ConfigError(f"config key 'loss_weights' must be >= 0 with one > 0, got {cfg['loss_weights']}")
    check_standalone_keys(cfg)


def check_standalone_keys(cfg):
    """`arch` must be a valid code when set; `init_from` needs `arch` (it seeds a standalone subnet)."""
    if cfg["arch"]:
        try:
            supernet.parse_arch(cfg["arch"])
        except ValueError as err:
            raise ckpt.ConfigError(f"config key 'arch': {err}") from None
    if cfg["init_from"] and not cfg["arch"]:
        raise ckpt.ConfigError("config key 'init_from' needs 'arch': it initialises a standalone subnet "
                               "from a supernet run")


def read_config_file(path):
    """A JSON object from `path`, or ckpt.ConfigError naming the file."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise ckpt.ConfigError(f"config file not found: {path}") from None
    except ValueError as err:
        raise ckpt.ConfigError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise ckpt.ConfigError(f"{path}: must hold a JSON object")
    return cfg


def parse_args(argv, defaults):
    """Flags: --config, --resume (and its long forms), --dry_run, and one flag per config key."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="JSON config (keys of config.json only)")
    parser.add_argument("--resume", "--load_checkpoint", dest="resume", action="store_true",
                        help="continue the newest experiment (or --experiment_name) from its last checkpoint")
    parser.add_argument("--resume_experiment_name", help="resume this experiment (same as --resume --experiment_name NAME)")
    parser.add_argument("--dry_run", action="store_true", help="build the graph, check data and config, print the plan")
    parser.add_argument("--allow_cpu", action="store_true",
                        help="train on the CPU even where nvidia-smi lists a GPU that TensorFlow cannot use")
    keys = parser.add_argument_group("config keys (default: config.json)")
    for key, default in defaults.items():
        if isinstance(default, dict):
            continue
        if isinstance(default, bool):
            keys.add_argument(f"--{key}", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        elif isinstance(default, list):
            keys.add_argument(f"--{key}", type=float, nargs=len(default), default=argparse.SUPPRESS, help=f"{default}")
        else:
            keys.add_argument(f"--{key}", type=type(default), default=argparse.SUPPRESS, help=f"{default!r}")
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in defaults if hasattr(args, k)}
    if args.resume_experiment_name:
        args.resume = True
        overrides["experiment_name"] = args.resume_experiment_name
    return args, overrides


RUN_IDENTITY = ("seed", "eval_pool_size", "input_h", "input_w", "arch")  # a resumed run must keep these


def resumed_run(overrides, defaults):
    """The run folder --resume continues: --experiment_name's, else the newest under output_dir."""
    output_dir = overrides.get("output_dir", defaults["output_dir"])
    run_dir = (ckpt.run_folder(output_dir, overrides["experiment_name"]) if overrides.get("experiment_name")
               else ckpt.newest_run(output_dir, "last"))
    if not os.path.isdir(run_dir):
        raise ckpt.CheckpointError(f"no experiment to resume at {run_dir}")
    return run_dir


def resolve_config(args, overrides, defaults):
    """(config, run_dir): defaults <- config file, or the resumed run's saved config, <- the
    fast_mode overrides if fast_mode is on <- flags (explicit flags always win)."""
    if args.resume:
        if args.config != DEFAULT_CONFIG:
            raise ckpt.ConfigError("--config does not apply with --resume: the run's saved config is used; "
                                   "override keys with flags")
        run_dir = resumed_run(overrides, defaults)
        saved_path = os.path.join(run_dir, "config.json")
        cfg = ckpt.merge_config(defaults, read_config_file(saved_path), saved_path)
        for key in RUN_IDENTITY:
            if key in overrides and overrides[key] != cfg[key]:
                raise ckpt.ConfigError(f"--{key} {overrides[key]} differs from the resumed run's {cfg[key]}: "
                                  f"the sampler, eval pool and history depend on it; start a new experiment")
    else:
        cfg = ckpt.merge_config(defaults, read_config_file(args.config), args.config)
    if overrides.get("fast_mode", cfg["fast_mode"]):
        cfg = ckpt.merge_config(cfg, cfg["fast_mode_overrides"], "fast_mode_overrides")
    cfg = ckpt.merge_config(cfg, overrides, "flags")
    check_ranges(cfg)
    if not cfg["experiment_name"]:  # the PID keeps runs started in the same second apart
        cfg["experiment_name"] = time.strftime("supernet_%Y%m%d_%H%M%S") + f"_{os.getpid()}"
    run_dir = ckpt.run_folder(cfg["output_dir"], cfg["experiment_name"])
    if not args.resume and not args.dry_run and os.path.exists(os.path.join(run_dir, "checkpoints", "last", ckpt.META_NAME)):
        raise ckpt.ConfigError(f"experiment {run_dir} already has checkpoints: use --resume, "
                               f"or another --experiment_name")
    return cfg, run_dir


# ----------------------------------------------------------------------------- graph

def multiscale_loss(preds, flow_gt, weights):
    """sum over scales of weight * mean |pred - label|, the label area-resized to each scale
    (flow values unchanged: flow is in input-pixel units at every scale)."""
    total = 0.0
    for pred, weight in zip(preds, weights):
        size = pred.shape[1:3]
        label = flow_gt if size == flow_gt.shape[1:3] else tf.image.resize(flow_gt, size, method="area")
        total += weight * tf.reduce_mean(tf.abs(pred - label))
    return total


def cosine_learning_rate(cfg, global_step, total_steps):
    """Cosine decay from learning_rate at step 0 to 0 at total_steps."""
    progress = tf.minimum(tf.cast(global_step, tf.float32) / float(max(total_steps, 1)), 1.0)
    return cfg["learning_rate"] * 0.5 * (1.0 + tf.cos(math.pi * progress))


def build_update(cfg, data_loss, total_steps):
    """One optimizer update of every trainable variable from `data_loss` plus weight decay:
    gradient, global-norm clip, cosine learning rate, Adam (or SGD). Returns the fetchable pieces."""
    variables = tf.compat.v1.trainable_variables()
    loss = data_loss + cfg["weight_decay"] * tf.add_n([tf.nn.l2_loss(k) for k in supernet.kernel_variables(variables)])
    grads = tf.gradients(loss, variables)
    grad_norm = tf.linalg.global_norm(grads)
    clip = cfg["grad_clip_norm"]
    if clip > 0:
        grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=grad_norm)
    global_step = tf.compat.v1.train.get_or_create_global_step()
    lr = cosine_learning_rate(cfg, global_step, total_steps)
    if cfg["optimizer"] == "adam":
        optimizer = tf.compat.v1.train.AdamOptimizer(lr, cfg["adam_beta1"], cfg["adam_beta2"], cfg["adam_epsilon"])
    else:
        optimizer = tf.compat.v1.train.GradientDescentOptimizer(lr)
    train_op = optimizer.apply_gradients(zip(grads, variables), global_step=global_step)
    return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "train_op": train_op, "global_step": global_step,
            "clipped": grad_norm > clip if clip > 0 else tf.constant(False)}


def build_train_step(cfg, images, flows, total_steps, path_devices=None):
    """The fused fair step: 3 paths on one batch, one gradient of their mean loss, one update.

    images [B, H, W, 6], flows [B, H, W, 2]. Returns a dict of tensors and ops; feed `arch_paths`
    ([3, 9] int32, one fair cycle) and run `train_op`. The gradient of the mean of the three path
    losses is exactly the mean of the three per-path gradients, and it is applied once.
    With several `path_devices` (device names), path p runs on path_devices[p % N], forward and
    backward (tf.gradients keeps each gradient op on its forward op's device); the variables live
    on the first. Each path normalises with its own batch statistics, so the update is the same.
    """
    arch_paths = tf.compat.v1.placeholder(tf.int32, [supernet.NUM_OPTIONS, len(supernet.BLOCKS)], "arch_paths")
    spread = path_devices if path_devices and len(path_devices) > 1 else None
    path_losses = []
    for p in range(supernet.NUM_OPTIONS):
        with tf.device(spread[p % len(spread)]) if spread else contextlib.nullcontext():
            flows_p = supernet.build_flows(images, arch_paths[p], mode="train")
            path_losses.append(multiscale_loss(flows_p, flows, cfg["loss_weights"]))
    data_loss = tf.add_n(path_losses) / supernet.NUM_OPTIONS
    return dict(build_update(cfg, data_loss, total_steps), arch_paths=arch_paths)


def build_standalone_step(cfg, images, flows, total_steps, arch):
    """One subnet alone: the static graph of `arch` (only its layers exist), its loss and one update
    per step, with the supernet's variable names. `model_variables` (the subnet's weights and BN
    statistics, no optimizer state) are what `--init_from` restores from a supernet run."""
    loss = multiscale_loss(supernet.build_flows(images, arch, mode="train"), flows, cfg["loss_weights"])
    model_variables = tf.compat.v1.global_variables()
    return dict(build_update(cfg, loss, total_steps), arch=arch, model_variables=model_variables)


def training_input(cfg, data, start_step):
    """Batches from the training split inside the current graph, from batch `start_step` on (each a
    pure function of the seed and its step), behind feedable placeholders (evaluation feeds its own
    batches through the same tensors)."""
    dataset = data_fc2.make_dataset(data["train"], cfg["batch_size"], (cfg["input_h"], cfg["input_w"]), train=True,
                                    max_flow=cfg["max_flow"], seed=cfg["seed"], start_step=start_step)
    next_images, next_flows = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    h, w = cfg["input_h"], cfg["input_w"]
    images = tf.compat.v1.placeholder_with_default(next_images, [None, h, w, supernet.INPUT_CHANNELS], "images")
    flows = tf.compat.v1.placeholder_with_default(next_flows, [None, h, w, supernet.FLOW_CHANNELS], "flows")
    return images, flows


# ----------------------------------------------------------------------------- artifacts

def make_logger(path):
    """log(msg, echo=True): print (unless echo is False) and append to train.log, flushed, so a
    killed run keeps every line."""
    def log(msg, echo=True):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        if echo:
            print(line, flush=True)
        with open(path, "a") as f:
            f.write(line + "\n")
    return log


def history_columns(pool):
    """eval_history.csv columns: run figures then one EPE column per pool arch."""
    return (["epoch", "global_step", "mean_epe", "std_epe", "zero_flow_epe", "best_epe", "bad_epochs", "train_loss",
             "clip_rate", "lr", "fairness_gap", "eval_seconds", "wall_time_s"]
            + [f"epe_{supernet.format_arch(a).replace(',', '')}" for a in pool])


def read_history(path, columns):
    """The rows of eval_history.csv (none if it does not exist), each checked: its columns, and an
    integer epoch; a ValueError naming the file and line otherwise."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        if rows and reader.fieldnames != columns:
            raise ValueError(f"{path}: columns {reader.fieldnames} are not this run's {columns}")
    for line, row in enumerate(rows, 2):
        if not (row["epoch"] or "").isdigit() or None in row.values():
            raise ValueError(f"{path}:{line}: not an evaluation row of this run: {row['epoch']!r}...")
    return rows


def trim_history(path, last_epoch, columns):
    """Drop rows written after the last checkpoint (a run killed between its evaluation and its
    checkpoint redoes that epoch on resume; a fresh start keeps none); every earlier row is kept."""
    rows = read_history(path, columns)
    kept = [r for r in rows if int(r["epoch"]) <= last_epoch]
    if len(kept) != len(rows):
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(kept)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            f.write(text.getvalue())
        os.replace(tmp, path)


def write_scalars(writer, step, scalars):
    """TensorBoard scalars {tag: value} at `step` (plain Summary protos: no TensorBoard package needed)."""
    summary = tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(tag=t, simple_value=float(v)) for t, v in scalars.items()])
    writer.add_summary(summary, step)
    writer.flush()


def write_image(writer, step, tag, png, height, width):
    """One TensorBoard image (PNG bytes, RGBA) at `step`."""
    image = tf.compat.v1.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
    writer.add_summary(tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(tag=tag, image=image)]), step)
    writer.flush()


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


# ----------------------------------------------------------------------------- run state

@dataclasses.dataclass
class RunState:
    """Where a run stands after its last finished epoch: what a checkpoint's meta carries."""
    seed: int
    epoch: int = 0
    global_step: int = 0
    best_metric: float = None  # pool mean EPE of the best evaluation, None before the first
    best_epoch: int = None
    bad_epochs: int = 0  # evaluations since the best without an improvement of min_delta
    fairness_counts: dict = dataclasses.field(default_factory=fair.empty_counts)
    digest: str = ""  # chained digest of every path trained (fair.chain_digest)
    wall_time_s: float = 0.0
    stop_reason: str = None

    def to_meta(self):
        """The meta fields of this state (the sampler's as {seed, next_step, digest})."""
        return {"epoch": self.epoch, "global_step": self.global_step, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "fairness_counts": self.fairness_counts,
                "sampler": {"seed": self.seed, "next_step": self.global_step, "digest": self.digest},
                "wall_time_s": self.wall_time_s, "stop_reason": self.stop_reason}

    @classmethod
    def from_meta(cls, meta, path):
        """The state a checkpoint's meta holds; CheckpointError naming `path` and the field if a
        field is missing or of the wrong kind (a resume must not run on a guess)."""
        def field(name, check, wanted, parent=meta):
            value = parent.get(name) if isinstance(parent, dict) else None
            if not check(value):
                raise ckpt.CheckpointError(f"{path}: field '{name}' must be {wanted}, got {value!r}")
            return value
        count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
        finite = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        shape = {b: set(o) for b, o in fair.empty_counts().items()}
        sampler = field("sampler", lambda v: isinstance(v, dict), "an object")
        return cls(seed=field("seed", count, "an integer >= 0", sampler),
                   epoch=field("epoch", count, "an integer >= 0"),
                   global_step=field("global_step", count, "an integer >= 0"),
                   best_metric=field("best_metric", lambda v: v is None or finite(v), "a finite number or null"),
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
        """A new best only on an improvement of more than min_delta; early stop after `patience`
        evaluations without one. A non-finite EPE is an error: it must never become `best`."""
        if not math.isfinite(mean_epe):
            raise FloatingPointError(f"pool mean EPE is {mean_epe} at epoch {epoch}: stopped; nothing was saved")
        if self.best_metric is None or mean_epe < self.best_metric - cfg["early_stop_min_delta"]:
            self.best_metric, self.best_epoch, self.bad_epochs = mean_epe, epoch, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= cfg["early_stop_patience"]:
            self.stop_reason = "early_stopping"


# ----------------------------------------------------------------------------- what a run writes

RUN_FILES = ("config.json", "train.log", "eval_history.csv", "eval_pool_*.json", "fairness_counts.json",
             "train_report.json", "tb/*")  # what RunWriter writes (checkpoints aside), relative to the run


class RunWriter:
    """Everything a run writes besides the Saver's files, in one place: train.log, TensorBoard,
    eval_history.csv, config.json, the eval pool, the checkpoints' metas, fairness_counts.json and
    train_report.json (RUN_FILES)."""

    def __init__(self, run_dir, columns):
        self.run_dir, self.columns = run_dir, columns  # eval_history.csv's (history_columns)
        self.history = os.path.join(run_dir, "eval_history.csv")
        self.log = make_logger(os.path.join(run_dir, "train.log"))
        self.tb = None

    def start(self, cfg, pool, coverage, state, lines):
        """Start (or resume) writing: config, eval pool, the history cut back to `state`, the plan."""
        ckpt.write_json_atomic(os.path.join(self.run_dir, "config.json"), cfg)
        ckpt.write_json_atomic(os.path.join(self.run_dir, f"eval_pool_{len(pool)}.json"),
                               {"mode": "standalone" if cfg["arch"] else "supernet", "seed": cfg["seed"],
                                "size": len(pool), "archs": [supernet.format_arch(a) for a in pool],
                                "coverage": coverage})
        trim_history(self.history, state.epoch, self.columns)
        self.write_counts(state)
        for line in lines:
            self.log(line)
        with tf.Graph().as_default():
            self.tb = tf.compat.v1.summary.FileWriter(os.path.join(self.run_dir, "tb"))

    def write_counts(self, state):
        """fairness_counts.json: the counts of `state`, i.e. of the last checkpoint."""
        ckpt.write_json_atomic(os.path.join(self.run_dir, "fairness_counts.json"),
                               {"global_step": state.global_step, "counts": state.fairness_counts,
                                "fairness_gap": fair.fairness_gap(state.fairness_counts)})

    def training(self, step, out, clip_rate):
        """TensorBoard scalars of a progress line."""
        write_scalars(self.tb, step, {"train/loss": out["loss"], "train/lr": out["lr"], "train/clip_rate": clip_rate,
                                      "train/grad_norm": out["grad_norm"]})

    def evaluation(self, step, row, result, val_batches):
        """One evaluation: its history row (flushed to disk), TensorBoard scalars and flow panel."""
        new = not os.path.exists(self.history)
        with open(self.history, "a", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            if new:
                writer.writeheader()
            writer.writerow(dict(row, **{c: r["epe"] for c, r in zip(self.columns[-len(result["archs"]):],
                                                                      result["archs"])}))
            f.flush()
            os.fsync(f.fileno())
        write_scalars(self.tb, step, {"eval/mean_epe": result["mean_epe"],
                                      **{f"eval/epe/{r['arch']}": r["epe"] for r in result["archs"]}})
        write_image(self.tb, step, "eval/flow_best_arch", *evaluate.best_arch_panel(result, val_batches))

    def checkpoint(self, sess, saver, state, meta_fields, best):
        """Commit the epoch: `best` if it improved, then `last`, then the counts that match it."""
        meta = dict(state.to_meta(), **meta_fields)
        if best:
            ckpt.save(sess, saver, self.run_dir, "best", meta)
        ckpt.save(sess, saver, self.run_dir, "last", meta)
        self.write_counts(state)

    def finish(self, report):
        """train_report.json and the closing log line."""
        self.tb.close()
        path = os.path.join(self.run_dir, "train_report.json")
        ckpt.write_json_atomic(path, report)
        self.log(f"done: {report['stop_reason']} after {report['epochs_finished']} epochs, best pool EPE "
                 f"{report['best_metric']} at epoch {report['best_epoch']}; report {path}")


# ----------------------------------------------------------------------------- the loop

def checked_step(sess, fetches, feed, run, step):
    """sess.run of training step `step`; a failure of its input or a non-finite loss names the
    sample at fault (data_fc2.find_fault, which reads the step's samples again) when one is, else the step."""
    cfg = run.cfg

    def fault():
        samples = data_fc2.training_batch_samples(run.data["train"], cfg["seed"], [step], cfg["batch_size"])
        return data_fc2.find_fault(samples, (cfg["input_h"], cfg["input_w"]))
    try:
        out = sess.run(fetches, feed)
    except tf.errors.OpError as err:
        raise fault() or data_fc2.DataError(f"training batch {step}: {ckpt.one_line(err)}") from None
    if not np.isfinite(out["loss"]):
        raise fault() or FloatingPointError(f"loss is {out['loss']} at step {step}: stopped; resume from the last "
                                          f"checkpoint")
    return out


def train_step(sess, run, state):
    """Train step number state.global_step (one fair cycle, or one standalone update); advance the state."""
    fetches = {k: run.ops[k] for k in ("train_op", "loss", "lr", "clipped", "grad_norm")}
    if run.standalone:
        paths, feed = [run.pool[0]], None
    else:
        paths = fair.fair_cycle(run.cfg["seed"], state.global_step)
        feed = {run.ops["arch_paths"]: paths}
    out = checked_step(sess, fetches, feed, run, state.global_step)
    state.advance(paths)
    return out


def init_from_run(sess, variables, run_dir):
    """Set a standalone subnet's `variables` from the `best` checkpoint of the supernet run at
    `run_dir` (inherited weights); returns a line for the log. The network is fully convolutional,
    so any input size fits."""
    meta = ckpt.load_meta(run_dir, "best")
    ckpt.check_compatible(meta, *meta.get("search_space", {}).get("input_size", (None, None)), meta["prefix"])
    ckpt.check_variables(meta["prefix"], variables)
    try:
        tf.compat.v1.train.Saver(variables).restore(sess, meta["prefix"])
    except tf.errors.OpError as err:
        raise ckpt.CheckpointError(f"cannot initialise from {meta['prefix']}: {ckpt.one_line(err)}") from None
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
            f"eval pool ({len(pool)}, coverage {'ok' if coverage['ok'] else 'FAILED'}): "
            + " ".join(supernet.format_arch(a) for a in pool)]


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
    losses, clips = [], 0
    for i in range(run.steps_per_epoch):
        out = train_step(sess, run, state)
        losses.append(float(out["loss"]))
        clips += bool(out["clipped"])
        if state.global_step % cfg["log_every"] == 0 or i == run.steps_per_epoch - 1:
            rate = clock.rate(state.global_step)
            writer.log(f"epoch {epoch}/{cfg['num_epochs']} step {state.global_step}/{total} "
                       f"loss {np.mean(losses[-cfg['log_every']:]):.4f} lr {out['lr']:.3g} "
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
    result = evaluate.evaluate(sess, run.scorer, run.pool, run.recal_batches, run.val_batches, h, w, log=writer.log)
    clock.evaluated(result["seconds"])
    state.record_evaluation(result["mean_epe"], epoch, cfg)
    gap = fair.fairness_gap(state.fairness_counts)
    writer.evaluation(state.global_step, dict(
        figures, epoch=epoch, global_step=state.global_step, mean_epe=result["mean_epe"], std_epe=result["std_epe"],
        zero_flow_epe=result["zero_flow_epe"], best_epe=state.best_metric, bad_epochs=state.bad_epochs,
        fairness_gap=gap, eval_seconds=result["seconds"], wall_time_s=clock.wall()), result, run.val_batches)
    writer.log(f"epoch {epoch}: pool mean EPE {result['mean_epe']:.4f} (zero-flow {result['zero_flow_epe']:.4f}), "
               f"best {state.best_metric:.4f} at epoch {state.best_epoch}, evaluations without improvement "
               f"{state.bad_epochs}/{cfg['early_stop_patience']}, fairness gap {gap}")
    if state.stop_reason == "early_stopping":
        writer.log(f"early stopping: no improvement of more than {cfg['early_stop_min_delta']} "
                   f"in {cfg['early_stop_patience']} evaluations")


class Run(types.SimpleNamespace):
    """What one invocation trains: cfg, data, pool, coverage, steps_per_epoch, standalone, meta
    (of the checkpoint resumed, or None), history columns, the graph and its ops, scorer, saver,
    init, plan."""


def prepare(args, cfg, run_dir, hardware):
    """Everything checked, read and built before anything is written (cheapest first): data (every
    file's header), eval pool, the checkpoint to resume (meta checked), history, the scoring
    batches, the graph."""
    h, w = cfg["input_h"], cfg["input_w"]
    data = data_fc2.open_data(cfg)
    run = Run(cfg=cfg, data=data, standalone=bool(cfg["arch"]),
              steps_per_epoch=cfg["steps_per_epoch"] or max(1, data["counts"]["train"] // cfg["batch_size"]))
    run.pool = ([supernet.parse_arch(cfg["arch"])] if run.standalone
                else fair.build_eval_pool(cfg["eval_pool_size"], cfg["seed"], h, w))
    # a standalone run evaluates its own arch only: no pool whose coverage could be checked
    run.coverage = {"ok": None, "problems": []} if run.standalone else fair.pool_coverage(run.pool, h, w)
    run.meta = ckpt.load_meta(run_dir, "last") if args.resume else None
    meta_path = os.path.join(ckpt.checkpoint_dir(run_dir, "last"), ckpt.META_NAME)
    run.state = RunState.from_meta(run.meta, meta_path) if run.meta else RunState(seed=cfg["seed"])
    if run.meta:
        ckpt.check_compatible(run.meta, h, w, run.meta["prefix"])
    run.columns = history_columns(run.pool)
    read_history(os.path.join(run_dir, "eval_history.csv"), run.columns)
    if not args.dry_run:
        run.recal_batches, run.val_batches = evaluate.scoring_batches(cfg, data)
    total_steps = run.steps_per_epoch * cfg["num_epochs"]
    run.graph = tf.Graph()
    with run.graph.as_default():
        tf.compat.v1.set_random_seed(cfg["seed"])
        images, flows = training_input(cfg, data, run.state.global_step)
        run.ops = (build_standalone_step(cfg, images, flows, total_steps, run.pool[0]) if run.standalone
                   else build_train_step(cfg, images, flows, total_steps, hardware["path_devices"]))
        run.scorer = evaluate.build_scorer(images, flows, static_arch=run.pool[0] if run.standalone else None)
        run.saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables(), max_to_keep=None)
        run.init = tf.compat.v1.global_variables_initializer()
    params = supernet.graph_param_count(run.graph)
    run.plan = (standalone_plan_lines(cfg, data, run.steps_per_epoch, params) if run.standalone
                else plan_lines(cfg, data, run.steps_per_epoch, run.pool, run.coverage, params))
    return run


def start_session(sess, run, args, run_dir):
    """Initialise the variables, then restore the checkpoint resumed (every variable's shape
    checked) or inherit a supernet's weights (--init_from); returns lines for the log."""
    sess.run(run.init)
    if run.meta:
        ckpt.restore(sess, run.saver, run_dir, "last", run.cfg["input_h"], run.cfg["input_w"])
        return [f"restored epoch {run.state.epoch}, step {run.state.global_step} from {run.meta['prefix']}"]
    if run.cfg["init_from"]:
        return [init_from_run(sess, run.ops["model_variables"], run.cfg["init_from"])]
    return []


def train(args, cfg, run_dir):
    """Dry-run plan, or train (fresh or resumed) to the end or early stop; returns train_report."""
    wall_start = time.time()
    hardware = devices.report(cfg["devices"], allow_cpu=args.allow_cpu)
    run = prepare(args, cfg, run_dir, hardware)
    if args.dry_run:
        print("dry run: nothing will be trained or written")
        print("\n".join(run.plan))
        return None
    state, writer, meta_fields = run.state, RunWriter(run_dir, run.columns), run_meta_fields(run)
    with tf.compat.v1.Session(graph=run.graph, config=devices.session_config()) as sess:
        restored = start_session(sess, run, args, run_dir)
        writer.start(cfg, run.pool, run.coverage, state, [("resuming " if run.meta else "starting ") + run_dir]
                     + run.plan + restored)
        writer.log(hardware["summary"], echo=False)
        if state.stop_reason == "early_stopping":
            writer.log(f"this run stopped early at epoch {state.epoch}: nothing more to train")
        clock = Clock(state)
        for epoch in range(state.epoch + 1, cfg["num_epochs"] + 1):
            if state.stop_reason == "early_stopping":
                break
            # train one epoch, then evaluate the pool every eval_every epochs and after the last
            figures = train_epoch(sess, run, state, writer, clock, epoch)
            state.epoch = epoch
            if epoch % cfg["eval_every"] == 0 or epoch == cfg["num_epochs"]:
                evaluate_epoch(sess, run, state, writer, clock, epoch, figures)
            # commit the epoch: best (if it improved), last, and the counts of last
            state.wall_time_s = clock.wall()
            writer.checkpoint(sess, run.saver, state, meta_fields, best=state.best_epoch == epoch)
    report = train_report(run, run_dir, hardware, time.time() - wall_start)
    writer.finish(report)
    return report


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
            "data_reason": run.data["reason"], "devices": hardware,
            "checkpoints": {k: os.path.join(run_dir, "checkpoints", k) for k in ckpt.CHECKPOINT_KINDS},
            "wall_time_s": state.wall_time_s, "this_invocation_s": invocation_s}


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad config, data, checkpoint or output folder. A
    failed run leaves its folder as it was (ckpt.unchanged_on_failure); one writer at a time."""
    try:
        defaults = read_config_file(DEFAULT_CONFIG)
        args, overrides = parse_args(argv, defaults)
        if args.dry_run:
            train(args, *resolve_config(args, overrides, defaults))
            return 0
        # a resumed run is locked before its saved config is read: a writer holding it may rewrite it
        if args.resume:
            run_dir = resumed_run(overrides, defaults)
        else:
            cfg, run_dir = resolve_config(args, overrides, defaults)
            overrides["experiment_name"] = cfg["experiment_name"]  # a generated name is kept below
        with ckpt.writer_lock(run_dir, "run"), ckpt.unchanged_on_failure(run_dir, RUN_FILES):
            ckpt.remove_temp_files(run_dir)
            train(args, *resolve_config(args, overrides, defaults))
    except (ValueError, ckpt.CheckpointError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: cannot write {err.filename or 'the run'}: {err.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
