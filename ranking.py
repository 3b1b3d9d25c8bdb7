"""How far a supernet's order of subnets can be trusted: rank statistics (Kendall tau-b, Spearman
rho, seeded bootstrap intervals, top-k overlap), the noise floor of the evaluation behind them,
how the standalone order settles with training, the choice of subnets to train alone, the
margin between two subnets trained alone (does capacity matter on a task?), and the report's table
and picture."""
import csv
import os
import time

import numpy as np
from scipy import stats

import ckpt
import config
import metrics
import scoring
import stopping
import supernet
from errors import ArchError, CheckpointError, ConfigError, RankError

CANDIDATES_PER_TARGET = 8  # the chosen arch is drawn, seeded, among this many nearest a GMACs target
TOP_K = (1, 3, 5)
MIN_ARCHS = 3


def rank_correlations(x, y):
    """(Kendall tau-b, Spearman rho) of two equally long score lists; tau-b corrects for ties."""
    return float(stats.kendalltau(x, y).statistic), float(stats.spearmanr(x, y).statistic)


def bootstrap_intervals(x, y, samples, seed):
    """Seeded bootstrap over the archs: 95% percentile intervals of tau-b and rho.

    Each resample draws len(x) archs with replacement; resamples with no spread in x or y (the
    correlations are undefined there) are skipped and counted."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    taus, rhos = [], []
    for _ in range(samples):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) == 0 or np.ptp(y[idx]) == 0:
            continue
        tau, rho = rank_correlations(x[idx], y[idx])
        taus.append(tau)
        rhos.append(rho)
    if not taus:
        raise RankError("bootstrap: every resample lacked spread; too few distinct archs")
    return {"tau_ci95": [float(v) for v in np.percentile(taus, [2.5, 97.5])],
            "rho_ci95": [float(v) for v in np.percentile(rhos, [2.5, 97.5])],
            "samples": samples, "used": len(taus), "seed": seed}


def ranks(values):
    """1-based ranks, lowest value first; ties share their average rank."""
    return stats.rankdata(values)


def top_k_overlap(x, y, ks=TOP_K):
    """{k: shared members of the k lowest of x and of y, divided by k} for each k below len(x)."""
    order_x, order_y = np.argsort(x, kind="stable"), np.argsort(y, kind="stable")
    return {k: len(set(order_x[:k]) & set(order_y[:k])) / k for k in ks if k < len(x)}


def read_scores_csv(path):
    """{arch code: epe} from a search result CSV with `arch` and `epe` columns."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise RankError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise RankError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not rows or "arch" not in rows[0] or "epe" not in rows[0]:
        raise RankError(f"{path}: needs a header with 'arch' and 'epe' columns and at least one row")
    scores = {}
    for line, row in enumerate(rows, 2):
        try:
            arch = supernet.format_arch(supernet.parse_arch(row["arch"]))
            epe = float(row["epe"])
        except (TypeError, ValueError, ArchError) as err:
            raise RankError(f"{path}: line {line}: {err}") from None
        if not np.isfinite(epe):
            raise RankError(f"{path}: line {line}: epe {row['epe']!r} is not finite")
        if arch in scores:
            raise RankError(f"{path}: line {line}: arch {arch} is listed twice")
        scores[arch] = epe
    return scores


def compare_scores(path_a, path_b):
    """Kendall tau-b and Spearman rho between two search results on the archs both hold."""
    a, b = read_scores_csv(path_a), read_scores_csv(path_b)
    shared = sorted(set(a) & set(b))
    if len(shared) < MIN_ARCHS:
        raise RankError(f"{path_a} and {path_b} share {len(shared)} archs; at least {MIN_ARCHS} are needed")
    for path, scores in ((path_a, a), (path_b, b)):
        if len({scores[k] for k in shared}) == 1:
            raise RankError(f"{path}: every shared arch has the same EPE: there is no order to compare")
    tau, rho = rank_correlations([a[k] for k in shared], [b[k] for k in shared])
    return {"shared_archs": len(shared), "only_a": len(a) - len(shared), "only_b": len(b) - len(shared),
            "kendall_tau_b": tau, "spearman_rho": rho}


def choice_scores(archs):
    """[N, 2]: each arch's mean depth choice and mean kernel choice, each scaled to 0..1 (0: the
    lightest options of every depth block, or of every head; 1: the heaviest)."""
    space = supernet.SPACE
    kinds = [[i for i, b in enumerate(space.blocks) if (space.by_name[b].op == "depth") == depth]
             for depth in (True, False)]
    top = np.array(space.num_options, float) - 1
    scaled = np.asarray(archs, float) / top
    return np.stack([scaled[:, k].mean(1) for k in kinds], 1)


def choose_archs(count, seed):
    """`count` distinct archs spread over the depth choices and the kernel choices separately (so
    that a ranking is tested along both, not only along cost): targets on a grid of (mean depth
    choice, mean kernel choice), corners included (all-0 and the heaviest); for each target the arch
    is drawn (seeded) among the CANDIDATES_PER_TARGET unused archs nearest it."""
    archs = [supernet.index_to_arch(i) for i in range(supernet.SPACE.num_archs)]
    scores = choice_scores(archs)
    kernel_levels = max(2, int(np.sqrt(count * 3 / 4)))
    depth_levels = -(-count // kernel_levels)
    targets = [(d, k) for d in np.linspace(0, 1, depth_levels) for k in np.linspace(0, 1, kernel_levels)][:count]
    rng = np.random.default_rng(seed)
    used, chosen = np.zeros(len(archs), bool), []
    for target in targets:
        distance = np.where(used, np.inf, np.hypot(*(scores - target).T))
        order = np.argsort(distance, kind="stable")
        exact = order[distance[order] == 0]  # a target some arch hits exactly (a corner) is taken as it is
        pick = int(rng.choice(exact if len(exact) else order[:CANDIDATES_PER_TARGET]))
        used[pick] = True
        chosen.append(archs[pick])
    return chosen


def batch_weighted_epe(per_batch, sizes):
    """EPE over the whole validation set from per-batch EPEs (every batch has the same pixels per sample)."""
    return float(np.dot(per_batch, sizes) / np.sum(sizes))


def half_split_tau(per_batch, sizes):
    """Kendall tau-b between the archs' EPEs on the first and on the second half of the validation
    batches: how well the evaluation data alone reproduces its own ranking."""
    half = len(sizes) // 2
    if half == 0:
        return None
    first = [batch_weighted_epe(p[:half], sizes[:half]) for p in per_batch]
    second = [batch_weighted_epe(p[half:], sizes[half:]) for p in per_batch]
    return rank_correlations(first, second)[0]


def resolvable_pairs(per_batch, sizes):
    """Fraction of arch pairs whose EPE difference exceeds twice its standard error over the
    validation batches (paired: both archs see the same batches)."""
    per_batch = np.asarray(per_batch, float)
    n, hits, pairs = per_batch.shape[1], 0, 0
    for i in range(len(per_batch)):
        for j in range(i + 1, len(per_batch)):
            diff = per_batch[i] - per_batch[j]
            std_err = diff.std(ddof=1) / np.sqrt(n) if n > 1 else np.inf
            hits += abs(batch_weighted_epe(diff, sizes)) > 2 * std_err
            pairs += 1
    return hits / pairs


def noise_floor(supernet_batches, standalone_batches, sizes):
    """The evaluation's own resolution: per-arch spread of the standalone EPE over validation
    batches, the half-split tau of each ranking and the fraction of pairs it resolves."""
    spread = [float(np.std(p, ddof=1)) if len(p) > 1 else None for p in standalone_batches]
    overall = [batch_weighted_epe(p, sizes) for p in standalone_batches]
    return {"validation_batches": len(sizes), "validation_samples": int(np.sum(sizes)),
            "standalone_epe_range": float(np.ptp(overall)), "supernet_epe_range": float(np.ptp(
                [batch_weighted_epe(p, sizes) for p in supernet_batches])),
            "standalone_batch_std": spread,
            "standalone_std_error": [s / np.sqrt(len(sizes)) if s is not None else None for s in spread],
            "half_split_tau_standalone": half_split_tau(standalone_batches, sizes),
            "half_split_tau_supernet": half_split_tau(supernet_batches, sizes),
            "resolvable_pairs_standalone": resolvable_pairs(standalone_batches, sizes) if len(sizes) > 1 else None,
            "resolvable_pairs_supernet": resolvable_pairs(supernet_batches, sizes) if len(sizes) > 1 else None}


def read_history(run_dir, arch):
    """{epoch: EPE} of a standalone run's evaluations during training (eval_history.csv)."""
    column = "epe_" + supernet.format_arch(arch).replace(",", "")
    path = os.path.join(run_dir, "eval_history.csv")
    try:
        with open(path, newline="") as f:
            history = {int(r["epoch"]): float(r[column]) for r in csv.DictReader(f)}
    except (OSError, KeyError, ValueError, TypeError, csv.Error) as err:  # TypeError: a short row
        raise RankError(f"{path}: no {column} history: {err}") from None
    if not history or not all(np.isfinite(list(history.values()))):
        raise RankError(f"{path}: column {column} must hold a finite EPE for at least one evaluation")
    return history


def training_length_figures(histories, supernet_epes):
    """For every epoch all standalone runs evaluated: tau-b of their EPEs then against their final
    EPEs (is the standalone order settled?) and against the supernet's (does agreement grow with
    training?). The training evaluations use the same batches as the ranking."""
    epochs = sorted(set.intersection(*(set(h) for h in histories)))
    final = [h[max(h)] for h in histories]
    rows = []
    for epoch in epochs:
        at_epoch = [h[epoch] for h in histories]
        rows.append({"epoch": epoch, "tau_vs_final_standalone": rank_correlations(at_epoch, final)[0],
                     "tau_vs_supernet": rank_correlations(at_epoch, supernet_epes)[0]})
    return rows


def build_report(rows, supernet_batches, standalone_batches, sizes, bootstrap, seed):
    """rank_report's statistics from the per-arch rows (arch, gmacs, supernet_epe, standalone_epe)."""
    sup = [r["supernet_epe"] for r in rows]
    alone = [r["standalone_epe"] for r in rows]
    for row, rank_sup, rank_alone in zip(rows, ranks(sup), ranks(alone)):
        row.update(supernet_rank=float(rank_sup), standalone_rank=float(rank_alone),
                   rank_shift=float(rank_sup - rank_alone))
    tau, rho = rank_correlations(sup, alone)
    shift = max(rows, key=lambda r: abs(r["rank_shift"]))
    return {"num_archs": len(rows), "kendall_tau_b": tau, "spearman_rho": rho,
            "bootstrap": bootstrap_intervals(sup, alone, bootstrap, seed),
            "top_k_overlap": {str(k): v for k, v in top_k_overlap(sup, alone).items()},
            "largest_rank_shift": {"arch": shift["arch"], "shift": abs(shift["rank_shift"])},
            "noise_floor": noise_floor(supernet_batches, standalone_batches, sizes), "archs": rows}


def second_seed_rows(second, sizes):
    """The runs trained with a second seed ([(run_dir, arch, per-batch EPEs)]) as report rows."""
    return [{"arch": supernet.format_arch(arch), "run": run_dir, "standalone_epe": batch_weighted_epe(epes, sizes)}
            for run_dir, arch, epes in second]


def seed_ceiling(rows, second, sizes, bootstrap, seed):
    """How well two training seeds agree on the standalone order (what a perfect supernet could reach):
    Kendall tau-b, with its bootstrap interval, between the first seed's EPEs (`rows`) and the
    second's (`second`: [(run_dir, arch, per-batch EPEs)]) of the archs trained twice; None below 3.
    On the same archs, the supernet's tau-b against each seed's order, and its tau-b and rho against
    the two seeds' mean EPE (a standalone order with less training noise)."""
    by_code = {r["arch"]: r for r in rows}
    pairs = [(by_code[code]["standalone_epe"], batch_weighted_epe(epes, sizes), code)
             for _, arch, epes in second if (code := supernet.format_arch(arch)) in by_code]
    if len(pairs) < MIN_ARCHS:
        return None
    first, again, codes = (list(v) for v in zip(*pairs))
    by_supernet, mean = [by_code[c]["supernet_epe"] for c in codes], [(a + b) / 2 for a, b in zip(first, again)]
    tau_mean, rho_mean = rank_correlations(by_supernet, mean)
    return {"archs": codes, "first_seed_epe": first, "second_seed_epe": again,
            "kendall_tau_b": rank_correlations(first, again)[0],
            "bootstrap": bootstrap_intervals(first, again, bootstrap, seed),
            "supernet_tau_b_vs_seed": [rank_correlations(by_supernet, e)[0] for e in (first, again)],
            "supernet_vs_seed_mean": {"kendall_tau_b": tau_mean, "spearman_rho": rho_mean,
                                      "bootstrap": bootstrap_intervals(by_supernet, mean, bootstrap, seed)}}


def search_choice(supernet_dir, kind):
    """The whole-space search's best subnet within the median GMACs of the space (a mid-range budget):
    {arch, gmacs, supernet_epe, budget_gmacs}; RankError if the supernet has no whole-space search."""
    path = os.path.join(supernet_dir, f"search_{kind}", "scores.csv")
    try:
        with open(path, newline="") as f:
            rows = [{"arch": r["arch"], "gmacs": float(r["gmacs"]), "epe": float(r["epe"])} for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError, TypeError, csv.Error) as err:  # TypeError: a short row
        raise RankError(f"--search_choice needs the supernet's whole-space search {path} "
                        f"(python search.py --experiment_name {os.path.basename(supernet_dir)}): {err}") from None
    if not rows or not np.isfinite([(r["gmacs"], r["epe"]) for r in rows]).all():
        raise RankError(f"{path}: must hold a finite gmacs and epe for every subnet, and at least one subnet")
    budget = float(np.median([r["gmacs"] for r in rows]))
    best = min((r for r in rows if r["gmacs"] <= budget), key=lambda r: r["epe"])
    return {"arch": best["arch"], "gmacs": best["gmacs"], "supernet_epe": best["epe"], "budget_gmacs": budget}


def search_versus_random(choice, rows, second, sizes, spread=0.2):
    """The search's choice trained alone (its runs among `second`, and its row of `rows` if the study
    drew it too) against the study's standalone subnets of similar cost (GMACs within `spread` of the
    choice's; the 3 nearest if fewer than 2 are): their mean is what a random pick of that cost gives.
    Every subnet counts with the mean of all its seeds (its row and its second-seed runs), so the
    choice's two seeds meet the others' two where they have them. The difference's standard error is
    over the validation batches (paired); the seeds' spread shows the training noise."""
    def seed_runs(arch):  # per-batch EPEs of each run of `arch`, its row (the first seed) first
        return ([r["standalone_batches"] for r in rows if r["arch"] == arch]
                + [epes for _, a, epes in second if supernet.format_arch(a) == arch])
    similar = [r for r in rows if abs(r["gmacs"] - choice["gmacs"]) <= spread * choice["gmacs"]
               and r["arch"] != choice["arch"]]
    if len(similar) < 2:
        similar = sorted((r for r in rows if r["arch"] != choice["arch"]),
                         key=lambda r: abs(r["gmacs"] - choice["gmacs"]))[:3]
    runs = seed_runs(choice["arch"])
    mine = np.mean(runs, axis=0)
    random_pick = np.mean([np.mean(seed_runs(r["arch"]), axis=0) for r in similar], axis=0)
    diff = mine - random_pick
    return dict(choice, choice_seed_epes=[batch_weighted_epe(epes, sizes) for epes in runs],
                choice_epe=batch_weighted_epe(mine, sizes), random_pick_epe=batch_weighted_epe(random_pick, sizes),
                similar=[{"arch": r["arch"], "gmacs": r["gmacs"], "standalone_epe": r["standalone_epe"],
                          "seed_epes": [batch_weighted_epe(e, sizes) for e in seed_runs(r["arch"])]} for r in similar],
                difference=batch_weighted_epe(diff, sizes),
                difference_se=float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None)


def training_seconds(run_dirs):
    """The wall time the runs took to train (their train_report.json's), summed."""
    return float(sum(read_run(d)[1].get("wall_time_s", 0.0) for d in run_dirs))


def search_seconds(supernet_dir, kind):
    """The seconds of unit work the supernet's whole-space search took (its pareto.json), or None."""
    path = os.path.join(supernet_dir, f"search_{kind}", "pareto.json")
    try:
        seconds = ckpt.read_json(path, "search result")["provenance"]["unit_seconds"]
    except (CheckpointError, KeyError, TypeError):
        return None
    return float(seconds) if isinstance(seconds, (int, float)) else None


def time_taken_line(study_seconds):
    """The study's time by part (None: not measured), as printed."""
    parts = [f"{name} {'n/a' if s is None else f'{s / 60:.1f} min'}" for name, s in study_seconds.items()]
    return "time taken: " + ", ".join(parts) + " (standalone runs added up: with --jobs above 1, more than elapsed)"


def standalone_margin(runs, checkpoint_type, scored):
    """Two standalone runs' subnets (check_margin_runs) on the same batches (`scored`: recalibration
    and validation batches, batches.scoring_batches of the first run's data): each one's EPE and
    stopping figures, and the second's EPE minus the first's with its paired standard error over
    the validation samples (metrics.paired_se)."""
    recal_batches, val_batches = scored
    h, w, zero_flow = runs[0][1]["input_h"], runs[0][1]["input_w"], metrics.zero_flow_epe(val_batches)
    scored_runs = []
    for run_dir, cfg, arch in runs:
        with scoring.restored_scorer(run_dir, checkpoint_type, h, w, static_arch=arch, input_size=(h, w)) as (
                sess, scorer, meta):
            scored_run = scoring.score_subnet(sess, scorer, arch, recal_batches, val_batches)
        scored_runs.append({"run": run_dir, "arch": cfg["arch"], "seed": cfg["seed"],
                            "global_step": meta["global_step"], "epe": scored_run["epe"],
                            "sample_epe": scored_run["sample_epe"],
                            "stopping": stopping.figures(read_history(run_dir, arch), zero_flow)})
    first, second = scored_runs
    se = metrics.paired_se(second.pop("sample_epe"), first.pop("sample_epe"), metrics.sample_pixels(val_batches))
    margin = second["epe"] - first["epe"]
    return {"runs": scored_runs, "margin": margin, "paired_se": se, "margin_in_se": None if not se else margin / se,
            "validation_samples": int(sum(len(b[1]) for b in val_batches)), "zero_flow_epe": zero_flow,
            "checkpoint_type": checkpoint_type, "stopping_criterion_pct": {
                "last_two": stopping.LAST_TWO_PCT, "last": stopping.LAST_PCT}}


def margin_lines(result):
    """The two runs, their stopping figures and the margin, as printed."""
    lines = []
    for name, run in zip("AB", result["runs"]):
        stop = run["stopping"]
        tail = ("fewer than 3 evaluations: no stopping figures" if stop["stopped"] is None else
                f"best improved {stop['last_two_pct']:.2f}% / {stop['last_pct']:.2f}% of zero flow over its last "
                f"two evaluations / its last: {'stopped' if stop['stopped'] else 'still falling'}")
        lines.append(f"{name} {run['arch']} seed {run['seed']} ({run['run']}, step {run['global_step']}): "
                     f"EPE {run['epe']:.4f}; {tail}")
    se = result["paired_se"]
    lines.append(f"B - A: {result['margin']:+.4f} EPE" + ("" if not se else
                 f", paired SE {se:.4f} over {result['validation_samples']} validation samples: "
                 f"{abs(result['margin_in_se']):.1f} SE") + f" (zero flow {result['zero_flow_epe']:.4f})")
    return lines


def table_lines(report):
    """The rank table and the headline figures, as printed."""
    lines = [f"{'arch':<18} {'GMAC':>6} {'updates':>7} {'supernet EPE':>12} {'rank':>5} "
             f"{'standalone EPE':>14} {'+-batch sd':>10} {'rank':>5}"]
    noise = report["noise_floor"]
    by_standalone = sorted(zip(report["archs"], noise["standalone_batch_std"]), key=lambda p: p[0]["standalone_epe"])
    for row, spread in by_standalone:
        lines.append(f"{row['arch']:<18} {row['gmacs']:>6.3f} {row['standalone_updates']:>7} "
                     f"{row['supernet_epe']:>12.4f} "
                     f"{row['supernet_rank']:>5.1f} {row['standalone_epe']:>14.4f} "
                     f"{spread if spread is not None else float('nan'):>10.4f} {row['standalone_rank']:>5.1f}")
    boot = report["bootstrap"]
    lines += [f"Kendall tau-b {report['kendall_tau_b']:.3f} (95% bootstrap {boot['tau_ci95'][0]:.3f} .. "
              f"{boot['tau_ci95'][1]:.3f}), Spearman rho {report['spearman_rho']:.3f} "
              f"({boot['rho_ci95'][0]:.3f} .. {boot['rho_ci95'][1]:.3f}), {report['num_archs']} archs, "
              f"{boot['used']}/{boot['samples']} resamples, seed {boot['seed']}",
              "top-k overlap " + ", ".join(f"top-{k} {v:.2f}" for k, v in report["top_k_overlap"].items())
              + "; largest rank shift {shift:g} ({arch})".format(**report["largest_rank_shift"]),
              f"EPE range over the archs: standalone {noise['standalone_epe_range']:.4f}, supernet "
              f"{noise['supernet_epe_range']:.4f}",
              f"noise floor: {noise['validation_samples']} validation samples in "
              f"{noise['validation_batches']} batches; "
              f"half-split tau standalone {fmt(noise['half_split_tau_standalone'])}, supernet "
              f"{fmt(noise['half_split_tau_supernet'])}; pairs resolved (|diff| > 2 s.e.) standalone "
              f"{fmt(noise['resolvable_pairs_standalone'])}, supernet {fmt(noise['resolvable_pairs_supernet'])}"]
    lines += [f"standalone after epoch {r['epoch']}: "
              f"tau-b against its final order {r['tau_vs_final_standalone']:.3f}, "
              f"against the supernet {r['tau_vs_supernet']:.3f}" for r in report.get("training_length", [])]
    lines += study_lines(report) + stopping.lines(report["stopping"])
    return lines + ([time_taken_line(report["study_seconds"])] if "study_seconds" in report else [])


def study_lines(report):
    """The seeds' own agreement and the search's choice against a random pick of its cost, if measured."""
    lines = []
    ceiling = report.get("seed_ceiling")
    if ceiling:
        boot = ceiling["bootstrap"]
        lines.append(f"two seeds of {len(ceiling['archs'])} archs trained alone: Kendall tau-b "
                     f"{ceiling['kendall_tau_b']:.3f} ({boot['tau_ci95'][0]:.3f} .. {boot['tau_ci95'][1]:.3f}): "
                     "the ceiling a supernet's tau could reach")
        mean, taus = ceiling["supernet_vs_seed_mean"], ceiling["supernet_tau_b_vs_seed"]
        lines.append(f"supernet on those archs: Kendall tau-b {taus[0]:.3f} against the first seed, {taus[1]:.3f} "
                     f"against the second, {mean['kendall_tau_b']:.3f} ({mean['bootstrap']['tau_ci95'][0]:.3f} .. "
                     f"{mean['bootstrap']['tau_ci95'][1]:.3f}) against their mean EPE (Spearman rho "
                     f"{mean['spearman_rho']:.3f})")
    choice = report.get("search_choice")
    if choice:
        se = choice["difference_se"]
        seeds = ", ".join(f"{e:.4f}" for e in choice["choice_seed_epes"])
        lines.append(f"search's choice at <= {choice['budget_gmacs']:.3f} GMAC: {choice['arch']} "
                     f"({choice['gmacs']:.3f}), alone EPE {choice['choice_epe']:.4f} (seeds {seeds}); a random pick "
                     f"of that cost ({len(choice['similar'])} subnets) {choice['random_pick_epe']:.4f}; difference "
                     f"{choice['difference']:+.4f}" + (f" (paired SE {se:.4f})" if se else ""))
    return lines


def fmt(value):
    """A figure with 3 decimals, or n/a."""
    return "n/a" if value is None else f"{value:.3f}"


def standalone_name(arch):
    """Run folder name of a standalone subnet: standalone_<9 digits>."""
    return "standalone_" + supernet.format_arch(arch).replace(",", "")


def read_run(run_dir):
    """(config, train_report) of a finished run, or RankError naming the folder."""
    try:
        cfg = config.run_config(run_dir)
        path = os.path.join(run_dir, "train_report.json")
        report = ckpt.read_json(path, "train report (is the run finished?)")
    except (CheckpointError, ConfigError) as err:
        raise RankError(str(err)) from None
    if not isinstance(report, dict):
        raise RankError(f"{path}: must hold a JSON object")
    for field, kind in (("mode", str), ("data_source", str), ("global_step", int)):
        if not isinstance(report.get(field), kind):
            raise RankError(f"{path}: field '{field}' missing or not a JSON {'string' if kind is str else 'integer'}")
    wall = report.get("wall_time_s", 0.0)  # the study's time is added up from it
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not np.isfinite(wall):
        raise RankError(f"{path}: field 'wall_time_s' must be a number of seconds")
    return cfg, report


def data_seed(cfg):
    """The seed a run's synthetic pairs are drawn from: synthetic_seed, or with -1 the run's seed."""
    return cfg["seed"] if cfg["synthetic_seed"] == -1 else cfg["synthetic_seed"]


def data_identity(cfg):
    """What two runs must share to have seen the same data at the same size."""
    identity = {k: cfg.get(k) for k in ("input_h", "input_w", "synthetic", "base_path", "data_layout")}
    if cfg["synthetic"] or not cfg["base_path"]:  # synthetic pairs are drawn from these
        identity.update({k: cfg[k] for k in ("synthetic_train_size", "synthetic_val_size", "synthetic_scene")},
                        synthetic_seed=data_seed(cfg))
    return identity


def check_standalone_run(run_dir, reference_cfg, reference_report, reference):
    """(config, arch) of a finished standalone run that saw the data of the run `reference` (its
    config and train report; the name errors give it) at that run's input size; RankError naming
    the run otherwise."""
    cfg, report = read_run(run_dir)
    if not cfg.get("arch") or report.get("mode") != "standalone":
        raise RankError(f"{run_dir} is a supernet run, not a standalone run (train.py --arch CODE)")
    if report["data_source"] != reference_report["data_source"]:
        raise RankError(f"{run_dir}: data source {report['data_source']} differs from the {reference}'s "
                        f"{reference_report['data_source']}")
    check_same_data(run_dir, cfg, reference_cfg, reference)
    return cfg, supernet.parse_arch(cfg["arch"])


def check_same_data(run_dir, cfg, reference_cfg, reference):
    """RankError naming the run if its config (`cfg`, finished or not) draws other data or another
    input size than the run `reference`'s."""
    expected, theirs = data_identity(reference_cfg), data_identity(cfg)
    differing = [f"{k} {theirs[k]!r} ({reference} {v!r})" for k, v in expected.items() if theirs[k] != v]
    if differing:
        raise RankError(f"{run_dir}: not the {reference}'s data or input size: {', '.join(differing)}")


def check_left_run(run_dir, finished, reference_cfg, reference_report, reference):
    """A run found in a study's folder before training: a finished one is checked as for ranking
    (check_standalone_run), one to be resumed for its data and size, so that neither is reused or
    resumed on another study's data and refused only hours later."""
    if finished:
        check_standalone_run(run_dir, reference_cfg, reference_report, reference)
        return
    try:
        cfg = config.run_config(run_dir)
    except ConfigError as err:
        raise RankError(str(err)) from None
    check_same_data(run_dir, cfg, reference_cfg, reference)


def check_standalone_runs(supernet_cfg, supernet_report, run_dirs):
    """([(run_dir, arch)] to rank, one per arch; [(run_dir, arch)] second seeds) after checking each run
    is standalone, finished and saw the supernet's data at its input size (check_standalone_run). Of
    two runs of one arch with different training seeds the lower seed's is ranked and the other is its
    second seed; RankError names the first run at fault."""
    by_arch = {}
    for run_dir in run_dirs:
        cfg, arch = check_standalone_run(run_dir, supernet_cfg, supernet_report, "supernet")
        by_arch.setdefault(arch, []).append((cfg["seed"], run_dir))
    runs, seconds = [], []
    for arch, seeded in by_arch.items():
        seeded.sort()
        if len(seeded) > 2 or (len(seeded) == 2 and seeded[0][0] == seeded[1][0]):
            raise RankError(f"{seeded[-1][1]} and {seeded[0][1]} both train {supernet.format_arch(arch)}: "
                            "one run per arch, or two with different seeds")
        runs.append((seeded[0][1], arch))
        seconds += [(run_dir, arch) for _, run_dir in seeded[1:]]
    if len(runs) < MIN_ARCHS:
        raise RankError(f"{len(runs)} archs trained alone given; at least {MIN_ARCHS} are needed to rank")
    return runs, seconds


def check_margin_runs(run_dirs):
    """[(run_dir, config, arch)] of --margin's two runs: two different finished standalone runs, the
    second on the first's data at its input size; RankError naming the run at fault."""
    if os.path.realpath(run_dirs[0]) == os.path.realpath(run_dirs[1]):
        raise RankError(f"--margin: {run_dirs[0]} given twice")
    first_cfg, first_report = read_run(run_dirs[0])
    return [(run_dir, *check_standalone_run(run_dir, first_cfg, first_report, "first run")) for run_dir in run_dirs]


def score_per_batch(sess, scorer, arch, recal_batches, val_batches):
    """EPE of one subnet on each validation batch, from one recalibration and one pass (recalibrating
    before every batch would set the same statistics each time, at a recalibration per batch)."""
    sums = scoring.score_subnet(sess, scorer, arch, recal_batches, val_batches)["sample_epe"]
    pixels = metrics.sample_pixels(val_batches)
    ends = np.cumsum([len(batch[0]) for batch in val_batches])
    return [float(sums[a:b].sum() / pixels[a:b].sum()) for a, b in zip(np.r_[0, ends[:-1]], ends)]


def scores_of(run_dir, archs, checkpoint_type, scored, h, w, standalone=False):
    """(arch, per-batch EPEs) of each of `archs` in turn, as it is scored, held by one run's checkpoint:
    a supernet (dynamic graph) or a standalone run (`standalone`: the static graph of its one subnet)."""
    if not archs:
        return
    recal_batches, val_batches = scored
    with scoring.restored_scorer(run_dir, checkpoint_type, h, w, static_arch=archs[0] if standalone else None,
                                 input_size=(h, w)) as (sess, scorer, _):
        for arch in archs:
            yield arch, score_per_batch(sess, scorer, arch, recal_batches, val_batches)


def score_archs(run_dir, archs, checkpoint_type, scored, h, w, standalone=False, on_scored=None):
    """{arch: per-batch EPEs} of `archs` held by one run's checkpoint (scores_of); on_scored(run_dir,
    arch) after each, if given."""
    epes = {}
    for arch, per_batch in scores_of(run_dir, archs, checkpoint_type, scored, h, w, standalone):
        epes[arch] = per_batch
        if on_scored:
            on_scored(run_dir, arch)
    return epes


def scoring_progress(total, log=print):
    """on_scored for score_archs: a line per subnet scored, with how many of `total`, the time each
    took on average and the time left."""
    start, done = time.time(), [0]

    def on_scored(run_dir, arch):
        done[0] += 1
        each = (time.time() - start) / done[0]
        log(f"scored {done[0]}/{total}: {supernet.format_arch(arch)} in {os.path.basename(run_dir)}, "
            f"{each:.0f} s each, time left {(total - done[0]) * each / 60:.1f} min")
    return on_scored
