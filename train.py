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
import io
import json
import math
import os
import sys
import time

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


class ConfigError(ValueError):
    """A bad config file, key, value or flag; the message names it."""


# ----------------------------------------------------------------------------- config

def _type_error(where, key, value, default):
    return ConfigError(f"{where}: key '{key}' must be {type(default).__name__}, got {type(value).__name__} {value!r}")


def checked_value(where, key, value, default):
    """`value` if it has the type of `default` (an int is accepted for a float), else ConfigError."""
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is not type(default):
            raise _type_error(where, key, value, default)
    elif isinstance(default, float):
        if not isinstance(value, (int, float)):
            raise _type_error(where, key, value, default)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: key '{key}' must be a finite number, got {value!r}")
        return float(value)
    elif isinstance(default, list):
        if not isinstance(value, list) or len(value) != len(default):
            raise ConfigError(f"{where}: key '{key}' must be a list of {len(default)} numbers, got {value!r}")
        return [checked_value(where, f"{key}[{i}]", v, d) for i, (v, d) in enumerate(zip(value, default))]
    elif isinstance(default, dict):
        if not isinstance(value, dict):
            raise _type_error(where, key, value, default)
        return merge_config(default, value, f"{where}: {key}", allow_new=False)
    elif not isinstance(value, type(default)):
        raise _type_error(where, key, value, default)
    return value


def merge_config(base, updates, where, allow_new=False):
    """`base` updated with `updates`, each key known to `base` (unless allow_new) and type-checked."""
    merged = dict(base)
    for key, value in updates.items():
        if key not in base:
            if not allow_new:
                raise ConfigError(f"{where}: unknown key '{key}'")
            merged[key] = value
            continue
        merged[key] = checked_value(where, key, value, base[key])
    return merged


def check_ranges(cfg):
    """Raise ConfigError for values of the right type but outside their range."""
    for key in POSITIVE:
        if cfg[key] <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {cfg[key]}")
    for key in NON_NEGATIVE:
        if cfg[key] < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {cfg[key]}")
    if cfg["devices"] > devices.MAX_PATH_DEVICES:
        raise ConfigError(f"config key 'devices' must be at most {devices.MAX_PATH_DEVICES} (one per path), "
                          f"got {cfg['devices']}")
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}, got {cfg[key]!r}")
    try:
        supernet.check_input_size(cfg["input_h"], cfg["input_w"])
    except ValueError as err:
        raise ConfigError(f"config: {err}") from None
    if cfg["eval_pool_size"] % supernet.NUM_OPTIONS:
        raise ConfigError(f"config key 'eval_pool_size' must be a multiple of 3 (whole fair cycles), got {cfg['eval_pool_size']}")
    for key in ("adam_beta1", "adam_beta2"):
        if not 0 <= cfg[key] < 1:
            raise ConfigError(f"config key '{key}' must be in [0, 1), got {cfg[key]}")
    if cfg["adam_epsilon"] <= 0:
        raise ConfigError(f"config key 'adam_epsilon' must be > 0, got {cfg['adam_epsilon']}")
    if min(cfg["loss_weights"]) < 0 or max(cfg["loss_weights"]) <= 0:
        raise ConfigError(f"config key 'loss_weights' must be >= 0 with one > 0, got {cfg['loss_weights']}")
    check_standalone_keys(cfg)


def check_standalone_keys(cfg):
    """`arch` must be a valid code when set; `init_from` needs `arch` (it seeds a standalone subnet)."""
    if cfg["arch"]:
        try:
            supernet.parse_arch(cfg["arch"])
        except ValueError as err:
            raise ConfigError(f"config key 'arch': {err}") from None
    if cfg["init_from"] and not cfg["arch"]:
        raise ConfigError("config key 'init_from' needs 'arch': it initialises a standalone subnet from a supernet run")


def read_config_file(path):
    """A JSON object from `path`, or ConfigError naming the file."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: must hold a JSON object")
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


def resolve_config(args, overrides, defaults):
    """(config, run_dir): defaults <- config file, or the resumed run's saved config, <- the
    fast_mode overrides if fast_mode is on <- flags (explicit flags always win)."""
    if args.resume:
        if args.config != DEFAULT_CONFIG:
            raise ConfigError("--config does not apply with --resume: the run's saved config is used; override keys with flags")
        output_dir = overrides.get("output_dir", defaults["output_dir"])
        run_dir = (ckpt.run_folder(output_dir, overrides["experiment_name"]) if overrides.get("experiment_name")
                   else ckpt.newest_run(output_dir, "last"))
        saved_path = os.path.join(run_dir, "config.json")
        cfg = merge_config(defaults, read_config_file(saved_path), saved_path)
        for key in RUN_IDENTITY:
            if key in overrides and overrides[key] != cfg[key]:
                raise ConfigError(f"--{key} {overrides[key]} differs from the resumed run's {cfg[key]}: "
                                  f"the sampler, eval pool and history depend on it; start a new experiment")
    else:
        cfg = merge_config(defaults, read_config_file(args.config), args.config)
    if overrides.get("fast_mode", cfg["fast_mode"]):
        cfg = merge_config(cfg, cfg["fast_mode_overrides"], "fast_mode_overrides")
    cfg = merge_config(cfg, overrides, "flags")
    check_ranges(cfg)
    if not cfg["experiment_name"]:
        cfg["experiment_name"] = time.strftime("supernet_%Y%m%d_%H%M%S")
    run_dir = ckpt.run_folder(cfg["output_dir"], cfg["experiment_name"])
    if args.resume and not os.path.isdir(run_dir):
        raise ckpt.CheckpointError(f"no experiment to resume at {run_dir}")
    if not args.resume and not args.dry_run and os.path.exists(os.path.join(run_dir, "checkpoints", "last", ckpt.META_NAME)):
        raise ConfigError(f"experiment {run_dir} already has checkpoints: use --resume, or another --experiment_name")
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


def append_history(path, columns, row):
    """Append one evaluation to eval_history.csv (header first if new), flushed to disk."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, columns)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def trim_history(path, last_epoch):
    """Drop rows written after the last checkpoint (a run killed between its evaluation and its
    checkpoint redoes that epoch on resume; a fresh start keeps none); every earlier row is kept."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        columns = list(rows[0].keys()) if rows else None
    if columns is None:
        return
    kept = [r for r in rows if int(r["epoch"]) <= last_epoch]
    if len(kept) != len(rows):
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(kept)
        tmp = path + ".tmp"
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


# ----------------------------------------------------------------------------- the loop

def new_state(seed):
    """Training state as a checkpoint's meta carries it: a fresh run's."""
    return {"epoch": 0, "global_step": 0, "best_metric": None, "best_epoch": None, "bad_epochs": 0,
            "fairness_counts": fair.empty_counts(), "sampler": {"seed": seed, "next_step": 0, "digest": ""},
            "wall_time_s": 0.0, "stop_reason": None}


def fair_step(sess, step_ops, seed, state):
    """Train fair cycle number state['global_step'] and advance the state; returns the fetches."""
    step = state["global_step"]
    cycle = fair.fair_cycle(seed, step)
    out = sess.run({k: step_ops[k] for k in ("train_op", "loss", "lr", "clipped", "grad_norm")},
                   {step_ops["arch_paths"]: cycle})
    if not np.isfinite(out["loss"]):
        raise FloatingPointError(f"loss is {out['loss']} at step {step}: stopped; resume from the last checkpoint")
    state.update(global_step=step + 1, fairness_counts=fair.add_counts(state["fairness_counts"], cycle),
                 sampler={"seed": seed, "next_step": step + 1, "digest": fair.chain_digest(state["sampler"]["digest"], cycle)})
    return out


def standalone_step(sess, step_ops, state):
    """Train step number state['global_step'] of a standalone subnet and advance the state; the
    fairness counts record its one path, so they say what was trained."""
    out = sess.run({k: step_ops[k] for k in ("train_op", "loss", "lr", "clipped", "grad_norm")})
    if not np.isfinite(out["loss"]):
        raise FloatingPointError(f"loss is {out['loss']} at step {state['global_step']}: stopped; "
                                 f"resume from the last checkpoint")
    path = [step_ops["arch"]]
    state.update(global_step=state["global_step"] + 1, fairness_counts=fair.add_counts(state["fairness_counts"], path),
                 sampler=dict(state["sampler"], next_step=state["global_step"] + 1,
                              digest=fair.chain_digest(state["sampler"]["digest"], path)))
    return out


def init_from_run(sess, variables, run_dir, log):
    """Set a standalone subnet's `variables` from the `best` checkpoint of the supernet run at
    `run_dir` (inherited weights). The network is fully convolutional, so any input size fits."""
    meta = ckpt.load_meta(run_dir, "best")
    ckpt.check_compatible(meta, *meta.get("search_space", {}).get("input_size", (None, None)), meta["prefix"])
    try:
        tf.compat.v1.train.Saver(variables).restore(sess, meta["prefix"])
    except tf.errors.OpError as err:
        raise ckpt.CheckpointError(f"cannot initialise from {meta['prefix']}: {err.message.splitlines()[0]}") from None
    log(f"initialised {len(variables)} variables from {meta['prefix']} "
        f"(epoch {meta['epoch']}, step {meta['global_step']})")


def update_early_stopping(state, mean_epe, epoch, cfg):
    """Record an evaluation: a new best only on an improvement of more than min_delta."""
    if state["best_metric"] is None or mean_epe < state["best_metric"] - cfg["early_stop_min_delta"]:
        state.update(best_metric=mean_epe, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    if state["bad_epochs"] >= cfg["early_stop_patience"]:
        state["stop_reason"] = "early_stopping"


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


def train(args, cfg, run_dir):
    """Dry-run plan, or train (fresh or resumed) to the end or early stop; returns train_report."""
    wall_start = time.time()
    hardware = devices.report(cfg["devices"], allow_cpu=args.allow_cpu)
    data = data_fc2.open_data(cfg)
    steps_per_epoch = cfg["steps_per_epoch"] or max(1, data["counts"]["train"] // cfg["batch_size"])
    total_steps = steps_per_epoch * cfg["num_epochs"]
    h, w = cfg["input_h"], cfg["input_w"]
    standalone = bool(cfg["arch"])
    pool = ([supernet.parse_arch(cfg["arch"])] if standalone
            else fair.build_eval_pool(cfg["eval_pool_size"], cfg["seed"], h, w))
    # a standalone run evaluates its own arch only: no pool whose coverage could be checked
    coverage = {"ok": None, "problems": []} if standalone else fair.pool_coverage(pool, h, w)
    meta = ckpt.load_meta(run_dir, "last") if args.resume else None
    if meta:
        ckpt.check_compatible(meta, h, w, meta["prefix"])

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(cfg["seed"])
        images, flows = training_input(cfg, data, meta["global_step"] if meta else 0)
        step_ops = (build_standalone_step(cfg, images, flows, total_steps, pool[0]) if standalone
                    else build_train_step(cfg, images, flows, total_steps, hardware["path_devices"]))
        scorer = evaluate.build_scorer(images, flows, static_arch=pool[0] if standalone else None)
        saver = tf.compat.v1.train.Saver(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES), max_to_keep=None)
        init = tf.compat.v1.global_variables_initializer()
    plan = (standalone_plan_lines(cfg, data, steps_per_epoch, supernet.graph_param_count(graph)) if standalone
            else plan_lines(cfg, data, steps_per_epoch, pool, coverage, supernet.graph_param_count(graph)))
    if args.dry_run:
        print("dry run: nothing will be trained or written")
        print("\n".join(plan))
        return None

    os.makedirs(run_dir, exist_ok=True)
    log = make_logger(os.path.join(run_dir, "train.log"))
    ckpt.write_json_atomic(os.path.join(run_dir, "config.json"), cfg)
    ckpt.write_json_atomic(os.path.join(run_dir, f"eval_pool_{len(pool)}.json"),
                           {"mode": "standalone" if standalone else "supernet",
                            "seed": cfg["seed"], "size": len(pool), "archs": [supernet.format_arch(a) for a in pool],
                            "coverage": coverage})
    history_path, columns = os.path.join(run_dir, "eval_history.csv"), history_columns(pool)
    log(("resuming " if meta else "starting ") + run_dir)
    log(hardware["summary"], echo=False)
    for line in plan:
        log(line)
    recal_batches, val_batches = evaluate.scoring_batches(cfg, data)
    with graph.as_default():
        tb = tf.compat.v1.summary.FileWriter(os.path.join(run_dir, "tb"))

    state = new_state(cfg["seed"])
    with tf.compat.v1.Session(graph=graph, config=devices.session_config()) as sess:
        sess.run(init)
        if meta:
            ckpt.restore(sess, saver, run_dir, "last", h, w)
            state.update({k: meta[k] for k in state})
            log(f"restored epoch {state['epoch']}, step {state['global_step']} from {meta['prefix']}")
        elif cfg["init_from"]:
            init_from_run(sess, step_ops["model_variables"], cfg["init_from"], log)
        trim_history(history_path, state["epoch"])
        if state["stop_reason"] == "early_stopping":
            log(f"this run stopped early at epoch {state['epoch']}: nothing more to train")
        wall_before, loop_start, first_step = state["wall_time_s"], time.time(), state["global_step"]
        eval_spent, last_eval_s = 0.0, None  # the step rate leaves evaluations out; they are counted apart
        for epoch in range(state["epoch"] + 1, cfg["num_epochs"] + 1):
            if state["stop_reason"] == "early_stopping":
                break
            losses, clips = [], 0
            for i in range(steps_per_epoch):
                out = (standalone_step(sess, step_ops, state) if standalone
                       else fair_step(sess, step_ops, cfg["seed"], state))
                losses.append(float(out["loss"]))
                clips += bool(out["clipped"])
                if state["global_step"] % cfg["log_every"] == 0 or i == steps_per_epoch - 1:
                    rate = (state["global_step"] - first_step) / (time.time() - loop_start - eval_spent)
                    log(f"epoch {epoch}/{cfg['num_epochs']} step {state['global_step']}/{total_steps} "
                        f"loss {np.mean(losses[-cfg['log_every']:]):.4f} lr {out['lr']:.3g} "
                        f"grad_norm {out['grad_norm']:.3g} clipped {clips}/{i + 1} {rate:.2f} steps/s "
                        + time_left((total_steps - state["global_step"]) / rate, evaluations_left(epoch, cfg),
                                    last_eval_s))
                    write_scalars(tb, state["global_step"], {"train/loss": out["loss"], "train/lr": out["lr"],
                                                             "train/clip_rate": clips / (i + 1),
                                                             "train/grad_norm": out["grad_norm"]})
            state["epoch"] = epoch
            if epoch % cfg["eval_every"] == 0 or epoch == cfg["num_epochs"]:
                log(f"evaluating {len(pool)} subnets (BN recalibration over {len(recal_batches)} batches each)")
                result = evaluate.evaluate(sess, scorer, pool, recal_batches, val_batches, h, w, log=log)
                last_eval_s = result["seconds"]
                eval_spent += last_eval_s
                update_early_stopping(state, result["mean_epe"], epoch, cfg)
                gap = fair.fairness_gap(state["fairness_counts"])
                append_history(history_path, columns, {
                    "epoch": epoch, "global_step": state["global_step"], "mean_epe": result["mean_epe"],
                    "std_epe": result["std_epe"], "zero_flow_epe": result["zero_flow_epe"],
                    "best_epe": state["best_metric"], "bad_epochs": state["bad_epochs"], "train_loss": np.mean(losses),
                    "clip_rate": clips / steps_per_epoch, "lr": out["lr"], "fairness_gap": gap,
                    "eval_seconds": result["seconds"], "wall_time_s": wall_before + time.time() - loop_start,
                    **{c: r["epe"] for c, r in zip(columns[-len(pool):], result["archs"])}})
                write_scalars(tb, state["global_step"], {"eval/mean_epe": result["mean_epe"],
                                                         **{f"eval/epe/{r['arch']}": r["epe"] for r in result["archs"]}})
                write_image(tb, state["global_step"], "eval/flow_best_arch",
                            *evaluate.best_arch_panel(result, val_batches))
                log(f"epoch {epoch}: pool mean EPE {result['mean_epe']:.4f} (zero-flow {result['zero_flow_epe']:.4f}), "
                    f"best {state['best_metric']:.4f} at epoch {state['best_epoch']}, evaluations without improvement "
                    f"{state['bad_epochs']}/{cfg['early_stop_patience']}, fairness gap {gap}")
                if state["stop_reason"] == "early_stopping":
                    log(f"early stopping: no improvement of more than {cfg['early_stop_min_delta']} "
                        f"in {cfg['early_stop_patience']} evaluations")
            state["wall_time_s"] = wall_before + time.time() - loop_start
            meta_out = dict(state, data_source=data["data_source"], config=cfg, search_space=ckpt.search_space_signature(h, w))
            meta_out.update(mode="standalone" if standalone else "supernet", arch=cfg["arch"])
            if state["best_epoch"] == epoch:
                ckpt.save(sess, saver, run_dir, "best", meta_out)
            ckpt.save(sess, saver, run_dir, "last", meta_out)
            ckpt.write_json_atomic(os.path.join(run_dir, "fairness_counts.json"),
                                   {"global_step": state["global_step"], "counts": state["fairness_counts"],
                                    "fairness_gap": fair.fairness_gap(state["fairness_counts"])})
    tb.close()
    report = {"experiment": cfg["experiment_name"], "run_dir": run_dir, "epochs_finished": state["epoch"],
              "mode": "standalone" if standalone else "supernet", "arch": cfg["arch"],
              "num_epochs": cfg["num_epochs"], "global_step": state["global_step"],
              "stop_reason": state["stop_reason"] or "completed", "best_metric": state["best_metric"],
              "best_epoch": state["best_epoch"], "final_fairness_gap": fair.fairness_gap(state["fairness_counts"]),
              "fairness_counts": state["fairness_counts"], "path_sequence_digest": state["sampler"]["digest"],
              "eval_pool_coverage_ok": coverage["ok"], "data_source": data["data_source"], "data_reason": data["reason"],
              "devices": hardware,
              "checkpoints": {k: os.path.join(run_dir, "checkpoints", k) for k in ckpt.CHECKPOINT_KINDS},
              "wall_time_s": state["wall_time_s"], "this_invocation_s": time.time() - wall_start}
    ckpt.write_json_atomic(os.path.join(run_dir, "train_report.json"), report)
    log(f"done: {report['stop_reason']} after {state['epoch']} epochs, best pool EPE {state['best_metric']} "
        f"at epoch {state['best_epoch']}; report {os.path.join(run_dir, 'train_report.json')}")
    return report


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad config, data or checkpoint."""
    try:
        defaults = read_config_file(DEFAULT_CONFIG)
        args, overrides = parse_args(argv, defaults)
        cfg, run_dir = resolve_config(args, overrides, defaults)
        if args.dry_run:
            train(args, cfg, run_dir)
        else:
            with ckpt.writer_lock(run_dir, "run"):
                train(args, cfg, run_dir)
    except (ValueError, ckpt.CheckpointError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
