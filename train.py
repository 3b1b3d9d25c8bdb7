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
import os
import sys
import time


import ckpt
import config
import distribute
import run_files
import training
import errors
from errors import CheckpointError, ConfigError, EdgeFlowError


def parse_args(argv, defaults):
    """Flags: --config, --resume (and its long forms), --dry_run, and one flag per config key."""
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=config.DEFAULT_CONFIG, help="JSON config (keys of config.json only)")
    parser.add_argument("--resume", "--load_checkpoint", dest="resume", action="store_true",
                        help="continue the newest experiment (or --experiment_name) from its last checkpoint")
    parser.add_argument("--resume_experiment_name",
                        help="resume this experiment (same as --resume --experiment_name NAME)")
    parser.add_argument("--dry_run", action="store_true",
                        help="build the graph, check data and config, print the plan")
    parser.add_argument("--allow_cpu", action="store_true",
                        help="train on the CPU even where nvidia-smi lists a GPU that TensorFlow cannot use")
    keys = parser.add_argument_group("config keys (default: config.json)")
    for key, default in defaults.items():
        if isinstance(default, dict):
            continue
        helped = f"{config.KEY_HELP[key]} (config.json: {default!r})"
        if isinstance(default, bool):
            keys.add_argument(f"--{key}", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                              help=helped)
        elif isinstance(default, list):
            keys.add_argument(f"--{key}", type=float, nargs=len(default), default=argparse.SUPPRESS, help=helped)
        else:
            keys.add_argument(f"--{key}", type=type(default), default=argparse.SUPPRESS, help=helped)
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in defaults if hasattr(args, k)}
    if args.resume_experiment_name:
        args.resume = True
        overrides["experiment_name"] = args.resume_experiment_name
    return args, overrides


def resumed_run(overrides, defaults):
    """The run folder --resume continues: --experiment_name's, else the newest under output_dir."""
    output_dir = overrides.get("output_dir", defaults["output_dir"])
    run_dir = (ckpt.run_folder(output_dir, overrides["experiment_name"]) if overrides.get("experiment_name")
               else ckpt.newest_run(output_dir, "last"))
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"no experiment to resume at {run_dir}")
    return run_dir


def resolve_config(args, overrides, defaults):
    """(config, run_dir): defaults <- config file, or the resumed run's saved config, <- the
    fast_mode overrides if fast_mode is on <- flags (explicit flags always win)."""
    if args.resume:
        if args.config != config.DEFAULT_CONFIG:
            raise ConfigError("--config does not apply with --resume: the run's saved config is used; "
                              "override keys with flags")
        run_dir = resumed_run(overrides, defaults)
        saved_path = os.path.join(run_dir, "config.json")
        cfg = config.merge_config(defaults, config.read_config_file(saved_path), saved_path)
        for key in config.RUN_IDENTITY:
            if key in overrides and overrides[key] != cfg[key]:
                raise ConfigError(f"--{key} {overrides[key]} differs from the resumed run's {cfg[key]}: "
                                  f"the sampler, eval pool and history depend on it; start a new experiment")
    else:
        cfg = config.merge_config(defaults, config.read_config_file(args.config), args.config)
    # a resumed run's saved config is resolved already: its fast_mode overrides apply again only if asked
    if overrides.get("fast_mode", not args.resume and cfg["fast_mode"]):
        cfg = config.merge_config(cfg, cfg["fast_mode_overrides"], "fast_mode_overrides")
    cfg = config.merge_config(cfg, overrides, "flags")
    config.check_ranges(cfg)
    if not args.resume:
        config.check_new_run(cfg)
    if not cfg["experiment_name"]:  # the PID keeps runs started in the same second apart
        cfg["experiment_name"] = time.strftime("supernet_%Y%m%d_%H%M%S") + f"_{os.getpid()}"
    run_dir = ckpt.run_folder(cfg["output_dir"], cfg["experiment_name"])
    started = os.path.exists(os.path.join(run_dir, "checkpoints", "last", ckpt.META_NAME))
    if started and not args.resume and not args.dry_run:
        raise ConfigError(f"experiment {run_dir} already has checkpoints: use --resume, or another --experiment_name")
    return cfg, run_dir


def run(args, overrides, defaults):
    """Dry-run plan, or train under the run's writer lock; a failed run leaves its folder as it was
    (ckpt.unchanged_on_failure)."""
    flags = dict(resume=args.resume, dry_run=args.dry_run, allow_cpu=args.allow_cpu)
    if args.dry_run or not distribute.writes_run_files():  # a worker but the chief reads the run, writes nothing
        training.train(*resolve_config(args, overrides, defaults), **flags)
        return
    # a resumed run is locked before its saved config is read: a writer holding it may rewrite it
    if args.resume:
        run_dir = resumed_run(overrides, defaults)
    else:
        cfg, run_dir = resolve_config(args, overrides, defaults)
        overrides["experiment_name"] = cfg["experiment_name"]  # a generated name is kept below
    with ckpt.writer_lock(run_dir, "run"), ckpt.unchanged_on_failure(run_dir, run_files.RUN_FILES):
        training.train(*resolve_config(args, overrides, defaults), **flags)


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad config, data, checkpoint or output folder; one
    writer at a time."""
    try:
        defaults = config.defaults()
    except EdgeFlowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args, overrides = parse_args(argv, defaults)
    return errors.exit_code(run, args, overrides, defaults)


if __name__ == "__main__":
    sys.exit(main())
