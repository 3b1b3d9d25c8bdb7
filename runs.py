"""A trained run as the scoring commands see it: the flags that name it, its folder, its checked
config with the scoring flags applied, whether it is a supernet or one subnet trained alone, and
its eval pool."""
import argparse
import os

import batches
import ckpt
import config
import supernet
from errors import ArchError, CheckpointError, ConfigError


SCORING_FLAGS = {"batch_size": 1, "bn_recal_batches": 1, "eval_batches": 0}  # flag -> smallest value


def add_run_flags(parser, what):
    """The flags that choose a run, its checkpoint, the scoring batches and the dataset (shared by
    every entry point that scores a trained run); unset scoring flags keep the run's config."""
    parser.add_argument("--experiment_name", help=f"run under output_dir to {what} (default: the newest)")
    parser.add_argument("--output_dir", default=config.defaults()["output_dir"],
                        help="where runs live (default: config.json's)")
    parser.add_argument("--checkpoint_type", default="best", choices=ckpt.CHECKPOINT_KINDS,
                        help=ckpt.CHECKPOINT_KIND_HELP)
    parser.add_argument("--batch_size", type=int, help="batch size for recalibration and scoring")
    parser.add_argument("--bn_recal_batches", type=int, help="training batches per BN recalibration")
    parser.add_argument("--eval_batches", type=int, help="validation batches per subnet (0 = all)")
    batches.add_dataset_flags(parser)


def size_flag(text):
    """argparse type of --size: supernet.parse_size."""
    try:
        return supernet.parse_size(text)
    except ArchError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run_dir_of(*, output_dir, experiment_name, checkpoint_type):
    """The run folder add_run_flags' flags name: `experiment_name`'s under `output_dir`, or (None or
    "") the newest run there with a `checkpoint_type` checkpoint."""
    if not experiment_name:
        return ckpt.newest_run(output_dir, checkpoint_type)
    run_dir = ckpt.run_folder(output_dir, experiment_name)
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"run folder not found: {run_dir}")
    return run_dir


def check_scoring_flags(**flags):
    """ConfigError naming the flag unless each scoring flag given is in range. flags: values of
    SCORING_FLAGS' flags by name, None where the flag is not given."""
    for key, value in flags.items():
        if value is not None and value < SCORING_FLAGS[key]:
            raise ConfigError(f"--{key} {value} is out of range (at least {SCORING_FLAGS[key]})")


def scoring_config(run_dir, **flags):
    """The run's saved config (config.run_config: every key checked) with the scoring `flags` given
    (check_scoring_flags) applied."""
    check_scoring_flags(**flags)
    cfg = config.run_config(run_dir)
    cfg.update({key: value for key, value in flags.items() if value is not None})
    return cfg


def standalone_arch(cfg):
    """The arch of a standalone run (trained alone with train.py --arch), or None for a supernet."""
    return supernet.parse_arch(cfg["arch"]) if cfg.get("arch") else None


def pool_path(run_dir, cfg):
    """The run's eval pool file."""
    return os.path.join(run_dir, f"eval_pool_{cfg['eval_pool_size']}.json")


def read_pool(path):
    """The arch codes of an eval pool file, each checked; CheckpointError naming the file otherwise."""
    pool = ckpt.read_json(path, "eval pool")
    codes = pool.get("archs") if isinstance(pool, dict) else None
    if not isinstance(codes, list) or not codes:
        raise CheckpointError(f"{path}: field 'archs' must be a non-empty list of arch codes")
    try:
        return [supernet.parse_arch(code) for code in codes]
    except ArchError as err:
        raise CheckpointError(f"{path}: {err}") from None


def chosen_archs(arch_codes, run_dir, cfg):
    """(archs to score, whether they are the run's eval pool): the --arch codes given, or (none) the pool."""
    archs = [supernet.parse_arch(code) for code in arch_codes]
    repeated = sorted({supernet.format_arch(a) for a in archs if archs.count(a) > 1})
    if repeated:
        raise ConfigError(f"--arch {repeated[0]} is given more than once")
    standalone = standalone_arch(cfg)
    if standalone:
        if any(a != standalone for a in archs):
            raise ConfigError(f"{run_dir} is a standalone run of {cfg['arch']}: it scores only that arch")
        return [standalone], False
    path = pool_path(run_dir, cfg)
    if not archs:
        return read_pool(path), True
    pool = read_pool(path) if os.path.exists(path) else []
    return archs, sorted(archs) == sorted(pool)
