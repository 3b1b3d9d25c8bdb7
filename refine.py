"""Refine the supernet's best candidates: fine-tune each from the supernet's weights for a few steps,
one per core, and score it again on the batches the search scored it on, with paired standard errors.

    python refine.py --experiment_name demo --max_gmacs 0.5             # the front of <run>/search_best
    python refine.py --experiment_name demo --search outputs/demo/search_best_sample200_seed1 --off_front
    python refine.py --experiment_name demo --deploy_report outputs/demo/deploy_himax-we2 --refine_top 6

Writes <run>/refine/<source>/refine_report.json and refine.png (the children train under
<run>/refine/runs/); the same command started again after any kill resumes where it stopped.
"""
import math
import os
import shlex
import sys

import devices

import config
import errors
import pareto
import refining
import runs
from errors import RefineError

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    """Command-line flags; the refine settings left unset come from config.json's `refine`."""
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment_name", help="supernet run under output_dir (default: the newest)")
    parser.add_argument("--output_dir", default=config.defaults()["output_dir"], help="where runs live")
    parser.add_argument("--search", help="a finished search of the run's best checkpoint to take candidates from "
                                         "(default: <run>/search_best)")
    parser.add_argument("--deploy_report", metavar="PATH", help="take them from a deployment's board front instead "
                                                                "(its deploy_report.json, or the folder holding it)")
    parser.add_argument("--size", type=runs.size_flag, metavar="HxW",
                        help="with --deploy_report: the front's members at this size (default: its choice's size)")
    parser.add_argument("--max_gmacs", type=float, help="budget: candidates of at most this many GMACs")
    parser.add_argument("--max_params", type=float, help="budget: candidates of at most this many parameters")
    parser.add_argument("--off_front", action="store_true", help="take the lowest supernet EPE among every subnet "
                                                                 "the search scored, not only its EPE/GMACs front")
    parser.add_argument("--jobs", type=int, help="children trained at once, each on one core (or its own GPU) "
                                                 "(default: one per core, at most one per candidate)")
    for key, default in config.defaults()["refine"].items():
        parser.add_argument(f"--refine_{key}", type=type(default), default=None,
                            help=f"{config.REFINE_HELP[key]} (config.json: {default!r})")
    args = parser.parse_args(argv)
    if args.search and args.deploy_report:
        parser.error("--search and --deploy_report are two sources: give one")
    if args.size and not args.deploy_report:
        parser.error("--size needs --deploy_report (a search holds one size)")
    for flag in ("max_gmacs", "max_params"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{flag} {value} must be a positive number")
    args.command = shlex.join(["python", "refine.py"] + list(sys.argv[1:] if argv is None else argv))
    return args


def run(args):
    """Choose the candidates, refine them and print the report."""
    hardware = devices.report()  # before any session: quietens TensorFlow's device probing
    settings = refining.settings_from({k: getattr(args, f"refine_{k}") for k in config.defaults()["refine"]},
                                      lambda key: f"--refine_{key}")
    run_dir = runs.run_dir_of(output_dir=args.output_dir, experiment_name=args.experiment_name,
                              checkpoint_type=refining.KIND)
    if runs.standalone_arch(config.run_config(run_dir)):
        raise RefineError(f"{run_dir} is a standalone run: refine takes a supernet run's candidates")
    limits = pareto.budget_limits(max_gmacs=args.max_gmacs, max_params=args.max_params, min_fps=None)
    if args.deploy_report:
        source = refining.deployment_source(run_dir, args.deploy_report, args.size, limits, settings["top"])
    else:
        search_dir = args.search or os.path.join(run_dir, f"search_{refining.KIND}")
        source = refining.search_source(search_dir, limits, settings["top"], on_front=not args.off_front)
    jobs = refining.children_at_once(args.jobs, hardware, len(source.candidates))
    report, out = refining.refine(run_dir, source, settings, jobs, os.path.join(HERE, "train.py"), args.command,
                                  print)
    print("\n".join(refining.report_lines(report)))
    print(f"wrote {os.path.join(out, refining.REPORT_NAME)} and {refining.PICTURE_NAME}")
    return report


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad input."""
    return errors.exit_code(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
