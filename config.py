"""Configuration: config.json's defaults, the type and range rules every config obeys, and the one
checked reader of a run's saved config.

Order of precedence for training (train.py): config.json, then a config file, then
`fast_mode_overrides` when fast_mode is on, then explicit flags. Every other command reads a run's
saved `config.json` through `run_config`, which applies the same type rules.
"""
import json
import math
import os

import fair
import supernet
import synthetic
from errors import ArchError, ConfigError, DataError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")
CHOICES = {"optimizer": ("adam", "sgd"), "data_layout": ("auto", "lists", "folders"),
           "distribute": ("none", "mirrored", "multi_worker")}
POSITIVE = ("input_h", "input_w", "batch_size", "num_epochs", "eval_every", "eval_pool_size", "bn_recal_batches",
            "early_stop_patience", "log_every", "synthetic_train_size", "synthetic_val_size",
            "devices", "worker_timeout_s")
RECAL_AT = ("run", "deploy")  # where deployment recalibrates BN: at the run's input size or at the deployment size
CHOICE_RULES = ("within_noise", "lowest_epe")  # how a single network is chosen (noise_choice.py)
# keys runs made before them lack; their defaults reproduce what those runs did
ADDED_LATER = ("deploy", "synthetic_seed", "synthetic_scene", "distribute", "replicas", "worker_timeout_s", "refine",
               "distill_weight")
NON_NEGATIVE = ("steps_per_epoch", "eval_batches", "learning_rate", "weight_decay", "grad_clip_norm",
                "early_stop_min_delta", "max_flow", "seed", "replicas", "distill_weight")
MAX_SEED = 2**63 - 1  # TensorFlow's seeds are int64: above it nothing here can run
# what a resumed run keeps: its path sequence, eval pool, history and training pairs depend on these
# train.py's help for each config key it takes as a flag (the dicts, synthetic_scene, fast_mode_overrides
# and deploy, are set in a config file)
KEY_HELP = {
    "experiment_name": "run folder under output_dir (empty: supernet_<date>_<time>_<pid>)",
    "arch": "an arch code: train that subnet alone, a standalone run (empty: the supernet)",
    "init_from": "with --arch: start from this supernet run's best weights instead of from scratch",
    "output_dir": "the folder the run folders live in",
    "base_path": "the FlyingChairs2 root (empty: synthetic data)",
    "data_layout": "how base_path is laid out: auto, lists or folders",
    "synthetic": "train on generated pairs even where base_path is set",
    "synthetic_train_size": "synthetic training pairs, generated at the input size",
    "synthetic_val_size": "synthetic validation pairs, generated at the input size",
    "synthetic_seed": "the seed synthetic pairs are drawn from (-1: --seed, so another seed draws other pairs)",
    "input_h": "input height: training crops and scoring (a multiple of 4, 16 to 4096)",
    "input_w": "input width: training crops and scoring (a multiple of 4, 16 to 4096)",
    "max_flow": "training labels are clipped to +/- this many pixels",
    "batch_size": "pairs per training, recalibration and scoring batch",
    "num_epochs": "epochs to train (the cosine learning-rate schedule spans them)",
    "steps_per_epoch": "fair steps per epoch (0: training pairs // batch_size)",
    "optimizer": "adam, or sgd (plain gradient descent)",
    "learning_rate": "the starting learning rate, decayed to 0 along a cosine",
    "adam_beta1": "Adam's first-moment decay",
    "adam_beta2": "Adam's second-moment decay",
    "adam_epsilon": "Adam's epsilon",
    "weight_decay": "the weight of the L2 penalty on the conv kernels (times the sum of their l2_loss)",
    "grad_clip_norm": "gradients clipped to this global norm (0: no clipping)",
    "loss_weights": "the loss weights of the flow at 1/4, 1/2 and full scale",
    "distill_weight": "in-place distillation: each path also learns the largest path's flows, this times the "
                      "loss against them (0: off)",
    "eval_every": "epochs between evaluations on the eval pool",
    "eval_pool_size": "subnets scored at every evaluation (a multiple of 3; at most 300 for a new run)",
    "eval_batches": "validation batches each subnet is scored on (0: the whole split)",
    "bn_recal_batches": "training batches each BN recalibration before scoring uses",
    "early_stop_patience": "stop after this many evaluations without an improvement of more than "
                           "early_stop_min_delta",
    "early_stop_min_delta": "the EPE improvement that counts for early stopping",
    "seed": "seeds the path sampler, eval pool, crops and initialisation (0 to 2^63 - 1)",
    "log_every": "fair steps between progress lines",
    "devices": "devices the three paths of a fair step are spread over (1 to 3)",
    "distribute": "data-parallel replicas of the fair step: none, mirrored (this machine's GPUs or CPUs), "
                  "multi_worker (machines named by TF_CONFIG)",
    "replicas": "with distribute mirrored: how many replicas (0: one per GPU; without a GPU, N logical CPUs)",
    "worker_timeout_s": "with distribute multi_worker: seconds a step waits for a silent peer before every "
                        "worker stops",
    "fast_mode": "apply fast_mode_overrides (a tiny evaluation) for smoke runs",
}
# refine.py's flag (--refine_<key>) for each key of config.json's `refine`
REFINE_HELP = {
    "top": "candidates refined: the K lowest supernet EPE among those the source offers",
    "steps": "training steps of each candidate, from the supernet's best weights",
    "epochs": "epochs the steps are split into: a checkpoint after each, where a killed refinement resumes",
    "lr_scale": "each candidate's starting learning rate is the supernet's times this (then down a cosine over "
                "the steps as the supernet's did)",
}
# deploy.py's help for each key of config.json's `deploy` (search.py takes the choice's two as well)
DEPLOY_HELP = {
    "calibration_samples": "training crops the INT8 conversion is calibrated on",
    "recal_at": "recalibrate BN at the run's input size (run) or at the deployment size (deploy)",
    "size_steps": "input sizes deployed at: the largest this many that fit the board",
    "int8_top": "front members converted to INT8 and scored, lowest FP32 EPE first",
    "tflm_samples": "validation pairs the exported model is run on in TFLM",
    "compile_cache": "the compile cache's folder under output_dir",
    "choice_rule": "within_noise: the fastest/cheapest member within choice_noise_se paired SE of the lowest "
                   "EPE; lowest_epe: the lowest EPE",
    "choice_noise_se": "Z: EPEs less than Z paired SE apart are within the noise (cannot be told apart)",
}
RUN_IDENTITY = ("seed", "eval_pool_size", "input_h", "input_w", "arch", "synthetic", "synthetic_train_size",
                "synthetic_val_size", "synthetic_seed", "synthetic_scene")


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


def check_ranges(cfg, where="config"):
    """Raise ConfigError, naming `where` (a file, or "config") and the key, for values of the right
    type but outside their range."""
    problems = [f"key '{key}' must be > 0, got {cfg[key]}" for key in POSITIVE if cfg[key] <= 0]
    problems += [f"key '{key}' must be >= 0, got {cfg[key]}" for key in NON_NEGATIVE if cfg[key] < 0]
    if cfg["devices"] > fair.paths_per_cycle():
        problems.append(f"key 'devices' must be at most {fair.paths_per_cycle()} (one per path), got {cfg['devices']}")
    problems += [f"key '{key}' must be one of {', '.join(allowed)}, got {cfg[key]!r}"
                 for key, allowed in CHOICES.items() if cfg[key] not in allowed]
    paths = fair.paths_per_cycle()
    if cfg["eval_pool_size"] % paths:
        problems.append(f"key 'eval_pool_size' must be a multiple of {paths} (whole fair cycles), "
                        f"got {cfg['eval_pool_size']}")
    problems += [f"key '{key}' must be in [0, 1), got {cfg[key]}" for key in ("adam_beta1", "adam_beta2")
                 if not 0 <= cfg[key] < 1]
    if cfg["adam_epsilon"] <= 0:
        problems.append(f"key 'adam_epsilon' must be > 0, got {cfg['adam_epsilon']}")
    if min(cfg["loss_weights"]) < 0 or max(cfg["loss_weights"]) <= 0:
        problems.append(f"key 'loss_weights' must be >= 0 with one > 0, got {cfg['loss_weights']}")
    problems += [f"key '{key}' must be at most {MAX_SEED}, got {cfg[key]}" for key in ("seed", "synthetic_seed")
                 if cfg[key] > MAX_SEED]
    if cfg["synthetic_seed"] < -1:
        problems.append(f"key 'synthetic_seed' must be -1 (the run's seed) or a seed >= 0, "
                        f"got {cfg['synthetic_seed']}")
    try:
        synthetic.Scene.of(cfg["synthetic_scene"])
    except DataError as err:
        problems.append(str(err).replace("synthetic_scene: knob", "key 'synthetic_scene'"))
    deploy = cfg["deploy"]
    problems += [f"key 'deploy.{key}' must be > 0, got {deploy[key]}"
                 for key in ("calibration_samples", "size_steps", "int8_top", "tflm_samples") if deploy[key] <= 0]
    if not deploy["compile_cache"].strip():
        problems.append("key 'deploy.compile_cache' must name a folder (under output_dir), got an empty name")
    problems += [f"key 'deploy.{key}' must be one of {', '.join(allowed)}, got {deploy[key]!r}"
                 for key, allowed in (("recal_at", RECAL_AT), ("choice_rule", CHOICE_RULES))
                 if deploy[key] not in allowed]
    if not 0 < deploy["choice_noise_se"] < math.inf:  # NaN fails too
        problems.append(f"key 'deploy.choice_noise_se' must be a number > 0, got {deploy['choice_noise_se']}")
    problems += refine_problems(cfg["refine"])
    if cfg["distribute"] == "multi_worker" and not cfg["experiment_name"]:
        problems.append("key 'distribute' multi_worker needs 'experiment_name': every worker names the same run")
    if cfg["init_from"] and not cfg["arch"]:
        problems.append("key 'init_from' needs 'arch': it initialises a standalone subnet from a supernet run")
    if cfg["distill_weight"] > 0 and cfg["arch"]:
        problems.append("key 'distill_weight' applies to supernet runs only: a standalone run (arch) has no "
                        "larger path to learn from")
    for key, check in (("input_h/input_w", lambda: supernet.check_input_size(cfg["input_h"], cfg["input_w"])),
                       ("arch", lambda: cfg["arch"] and supernet.parse_arch(cfg["arch"]))):
        try:
            check()
        except ArchError as err:
            problems.append(f"key '{key}': {err}")
    if problems:
        raise ConfigError(f"{where}: {problems[0]}")


def refine_problems(refine, name=lambda key: f"key 'refine.{key}'"):
    """What is wrong with the `refine` settings, as lines naming each key by name(key) ([] when nothing is)."""
    problems = [f"{name(key)} must be > 0, got {refine[key]}" for key in REFINE_HELP
                if not 0 < refine[key] < math.inf]  # NaN fails too
    if not problems and refine["steps"] % refine["epochs"]:
        problems.append(f"{name('steps')} ({refine['steps']}) must be a multiple of {name('epochs')} "
                        f"({refine['epochs']}): every epoch trains the same number of steps")
    return problems


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


def check_new_run(cfg, where="config"):
    """ConfigError for what a run may no longer start with, though runs made before are still read."""
    if cfg["eval_pool_size"] > fair.MAX_POOL_SIZE:
        raise ConfigError(f"{where}: key 'eval_pool_size' must be at most {fair.MAX_POOL_SIZE} (each member is "
                          f"scored at every evaluation; search.py scores more), got {cfg['eval_pool_size']}")


def check_resumed(cfg, saved, where):
    """ConfigError naming the key unless `cfg` keeps the RUN_IDENTITY of a run's checkpointed config
    `saved` (`where`: its file); keys the checkpoint predates are not compared."""
    if not isinstance(saved, dict):
        raise ConfigError(f"{where}: field 'config' must be a JSON object")
    for key in RUN_IDENTITY:
        if key in saved and saved[key] != cfg[key]:
            raise ConfigError(f"{where}: key '{key}' was {saved[key]!r} when the run started and is now "
                              f"{cfg[key]!r}: the sampler, eval pool, history and data depend on it; "
                              "start a new experiment")


def defaults():
    """config.json: every key with its default value and type."""
    return read_config_file(DEFAULT_CONFIG)


def run_config(run_dir):
    """A run's saved config.json, every key of config.json there with its type (else ConfigError
    naming the file and key). Keys config.json no longer has are kept, so runs made before are
    still read; keys added since (ADDED_LATER) take their default, which reproduces what such a
    run did."""
    path = os.path.join(run_dir, "config.json")
    cfg = read_config_file(path)
    for key, default in defaults().items():
        value = default if key in ADDED_LATER and key not in cfg else cfg.get(key)
        cfg[key] = checked_value(path, key, value, default)
    check_ranges(cfg, path)
    return cfg
