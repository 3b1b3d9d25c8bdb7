"""The ranking study: subnets trained alone with a supernet run's config (chosen and trained here, or
given), each scored with the supernet and alone on the same batches, into the study's report: the two
orders (ranking.build_report), how the standalone order settles with training, the seeds' own
agreement and, with the search's choice, that choice against a random pick of its cost."""
import glob
import os
import sys

import numpy as np

import ckpt
import metrics
import parallel
import ranking
import stopping
import supernet
import tensorflow_quiet
from errors import RankError


def standalone_child(supernet_dir, supernet_cfg, supernet_report, arch, standalone_dir, train_py, seed=None):
    """(run folder, train.py argv or None if it is finished) for training `arch` alone with the
    supernet run's config (data, input size, batch, schedule, number of updates); a run interrupted
    earlier is resumed. A run found finished or resumable is checked first (ranking.check_left_run):
    one of another study's data is refused now, not hours later. With `seed`, another training seed
    on the same data (its synthetic pairs keep the supernet's data seed)."""
    name = ranking.standalone_name(arch) + ("" if seed is None else f"_seed{seed}")
    run_dir = os.path.join(standalone_dir, name)
    finished = os.path.exists(os.path.join(run_dir, "train_report.json"))
    resumable = os.path.exists(os.path.join(run_dir, "checkpoints", "last", ckpt.META_NAME))
    if finished or resumable:
        ranking.check_left_run(run_dir, finished, supernet_cfg, supernet_report, "supernet")
    if finished:
        return run_dir, None
    # the supernet's saved config is already resolved: fast_mode must not apply its overrides again
    flags = ["--output_dir", standalone_dir, "--experiment_name", name, "--no-fast_mode"]
    if resumable:
        argv = ["--resume"] + flags
    else:
        argv = ["--config", os.path.join(supernet_dir, "config.json"), "--arch", supernet.format_arch(arch)] + flags
        if seed is not None:
            argv += ["--seed", str(seed), "--synthetic_seed", str(ranking.data_seed(supernet_cfg))]
    return run_dir, [sys.executable, train_py] + argv


def second_seed_plan(count, supernet_cfg, archs, choice):
    """[(arch, seed)] to train with a second seed: `count` of `archs` (evenly spaced in their order;
    None: a third of them), and the search's choice with both seeds."""
    count = -(-len(archs) // 3) if count is None else count
    picked = [archs[i] for i in np.linspace(0, len(archs) - 1, count).round().astype(int)] if count else []
    seed = supernet_cfg["seed"] + 1
    plan = [(arch, seed) for arch in picked]
    if choice is not None:
        arch = supernet.parse_arch(choice["arch"])
        plan += [(arch, s) for s in (None, seed) if not (s is None and arch in archs) and arch not in picked]
    return plan


def trained_runs(supernet_dir, supernet_run, archs, seconds_plan, standalone_dir, jobs, gpus, train_py):
    """([(run_dir, arch)] of `archs`, [(run_dir, arch)] of the second seeds' plan [(arch, seed)]): every run
    of both not finished is trained now, `jobs` at a time (each on its share of the cores, or its GPU;
    with more than one, a run's output goes to <its folder>.out), after checking the runs left in the
    folder; then every run is checked (finished, standalone, the supernet's data and size)."""
    supernet_cfg, supernet_report = supernet_run
    plan = [(arch, None) for arch in archs] + seconds_plan
    os.makedirs(standalone_dir, exist_ok=True)
    children = [standalone_child(supernet_dir, supernet_cfg, supernet_report, arch, standalone_dir, train_py, seed)
                for arch, seed in plan]
    todo = [(run_dir, argv, run_dir + ".out" if jobs > 1 else None) for run_dir, argv in children if argv]
    print(f"{len(plan) - len(todo)} of {len(plan)} standalone runs finished already; training {len(todo)}, "
          f"{jobs} at a time", flush=True)
    parallel.run_all(todo, jobs, env=tensorflow_quiet.child_environment(), gpus=gpus)
    found = [run_dir for run_dir, _ in children]
    seconds = [(run_dir, ranking.check_standalone_run(run_dir, supernet_cfg, supernet_report, "supernet")[1])
               for run_dir in found[len(archs):]]
    runs = ranking.check_standalone_runs(supernet_cfg, supernet_report, found[:len(archs)])[0]
    return sorted(runs, key=lambda r: r[1]), seconds


def given_runs(supernet_run, paths, pattern, choice):
    """([(run_dir, arch)] to rank, [(run_dir, arch)] trained with a second seed) among the run folders
    given (`paths`, or those the glob `pattern` matches), checked and ordered by arch code, so the seeded
    bootstrap does not depend on the order they came in; RankError if the search's choice is not among them."""
    found = sorted(p for p in glob.glob(pattern) if os.path.isdir(p)) if pattern else paths
    if not found:
        raise RankError(f"--standalone_glob {pattern!r} matches no folder")
    runs, seconds = ranking.check_standalone_runs(*supernet_run, found)
    if choice is not None and not any(supernet.format_arch(arch) == choice["arch"] for _, arch in runs):
        raise RankError(f"--search_choice: none of the runs given trains the search's choice {choice['arch']}: "
                        "give its runs (train.py --arch CODE with the supernet's config.json), or use --train")
    return sorted(runs, key=lambda r: r[1]), sorted(seconds, key=lambda r: r[1])


def study_report(supernet_dir, runs, seconds, choice, scoring, histories, on_scored):
    """The study's report of the runs ([(run_dir, arch)]) and the second seeds' runs: `scoring` is
    (checkpoint kind, (recal, val) batches, (h, w), bootstrap resamples, bootstrap seed); `histories`
    {run_dir: {epoch: EPE}} are each run's evaluations."""
    kind, scored, size, bootstrap, seed = scoring
    sizes = [len(flows) for _, flows in scored[1]]
    report = order_report(supernet_dir, runs, kind, scored, size, bootstrap, seed, on_scored)
    report["training_length"] = ranking.training_length_figures([histories[d] for d, _ in runs],
                                                                [r["supernet_epe"] for r in report["archs"]])
    alone = [(run_dir, arch, ranking.score_archs(run_dir, [arch], kind, scored, *size, standalone=True,
                                                 on_scored=on_scored)[arch]) for run_dir, arch in seconds]
    report["second_seed_runs"] = ranking.second_seed_rows(alone, sizes)
    report["seed_ceiling"] = ranking.seed_ceiling(report["archs"], alone, sizes, bootstrap, seed)
    if choice is not None:
        report["search_choice"] = ranking.search_versus_random(choice, report["archs"], alone, sizes)
    report["zero_flow_epe"] = metrics.zero_flow_epe(scored[1])
    report["stopping"] = stopping.summary(histories, report["zero_flow_epe"])
    report["stopping"]["tau_if_improved"] = stopping.tau_range_if_improved(report["archs"],
                                                                           report["stopping"]["still_falling"])
    return report


def order_report(supernet_dir, runs, kind, scored, size, bootstrap, seed, on_scored):
    """The supernet's order of the runs' archs against the runs' own (ranking.build_report): each arch
    scored with the supernet and alone, per validation batch."""
    archs = [arch for _, arch in runs]
    sizes = [len(flows) for _, flows in scored[1]]
    by_supernet = ranking.score_archs(supernet_dir, archs, kind, scored, *size, on_scored=on_scored)
    alone = [ranking.score_archs(run_dir, [arch], kind, scored, *size, standalone=True,
                                 on_scored=on_scored)[arch] for run_dir, arch in runs]
    rows = [{"arch": supernet.format_arch(arch), "run": run_dir, "gmacs": supernet.count_macs(arch, *size) / 1e9,
             "params": supernet.count_params(arch, *size),
             "standalone_updates": ranking.read_run(run_dir)[1]["global_step"],
             "supernet_epe": ranking.batch_weighted_epe(by_supernet[arch], sizes),
             "standalone_epe": ranking.batch_weighted_epe(epes, sizes), "standalone_batches": epes}
            for (run_dir, arch), epes in zip(runs, alone)]
    return ranking.build_report(rows, [by_supernet[a] for a in archs], alone, sizes, bootstrap, seed)
