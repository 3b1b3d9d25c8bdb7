"""How far a supernet can be trusted: does it rank subnets the way training each alone does?

Scores standalone-trained subnets (`train.py --arch CODE` runs) with the supernet and alone, on the
same recalibration and validation batches, and reports Kendall tau-b and Spearman rho with seeded
bootstrap 95% intervals over the archs, top-k overlap, the largest rank shift and the noise floor
of the evaluation (spread over validation batches, rank agreement between two halves of it).

    python rank.py --supernet outputs/demo --standalone outputs/sa_a outputs/sa_b outputs/sa_c
    python rank.py --supernet outputs/demo --standalone_glob 'outputs/rank_demo/standalone_*'
    python rank.py --supernet outputs/demo --train 9 --standalone_dir outputs/rank_demo   # the whole study
    python rank.py --compare A/scores.csv B/scores.csv                                   # two search results
"""
import argparse
import csv
import glob
import os
import sys
import time

import numpy as np
import devices  # before tensorflow: quietens its start-up (see devices.py)
import tensorflow as tf
from scipy import stats

import ckpt
import data_fc2
import evaluate
import supernet
import train

CANDIDATES_PER_TARGET = 8  # the chosen arch is drawn, seeded, among this many nearest a GMACs target
TOP_K = (1, 3, 5)
MIN_ARCHS = 3


class RankError(ValueError):
    """Bad input to the ranking: the message names the run, file or flag."""


# ----------------------------------------------------------------------------- statistics

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


# ----------------------------------------------------------------------------- compare two search results

def read_scores_csv(path):
    """{arch code: epe} from a search result CSV with `arch` and `epe` columns."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise RankError(f"cannot read {path}: {err.strerror}") from None
    if not rows or "arch" not in rows[0] or "epe" not in rows[0]:
        raise RankError(f"{path}: needs a header with 'arch' and 'epe' columns and at least one row")
    scores = {}
    for line, row in enumerate(rows, 2):
        try:
            arch = supernet.format_arch(supernet.parse_arch(row["arch"]))
            scores[arch] = float(row["epe"])
        except (TypeError, ValueError) as err:
            raise RankError(f"{path}: line {line}: {err}") from None
        if not np.isfinite(scores[arch]):
            raise RankError(f"{path}: line {line}: epe {row['epe']!r} is not finite")
    return scores


def compare_scores(path_a, path_b):
    """Kendall tau-b and Spearman rho between two search results on the archs both hold."""
    a, b = read_scores_csv(path_a), read_scores_csv(path_b)
    shared = sorted(set(a) & set(b))
    if len(shared) < MIN_ARCHS:
        raise RankError(f"{path_a} and {path_b} share {len(shared)} archs; at least {MIN_ARCHS} are needed")
    tau, rho = rank_correlations([a[k] for k in shared], [b[k] for k in shared])
    return {"shared_archs": len(shared), "only_a": len(a) - len(shared), "only_b": len(b) - len(shared),
            "kendall_tau_b": tau, "spearman_rho": rho}


# ----------------------------------------------------------------------------- choosing and training subnets

def choose_archs(count, seed, h, w):
    """`count` distinct archs spread evenly over the GMACs range of the search space at h x w.

    Targets are evenly spaced from the smallest to the largest subnet's GMACs; for each target the
    arch is drawn (seeded) among the CANDIDATES_PER_TARGET unused archs nearest it, so the set
    spreads cost without always picking the same corner of the space."""
    archs = [supernet.index_to_arch(i) for i in range(supernet.NUM_ARCHS)]
    gmacs = np.array([supernet.count_macs(a, h, w) for a in archs], float) / 1e9
    rng = np.random.default_rng(seed)
    used, chosen = np.zeros(len(archs), bool), []
    for target in np.linspace(gmacs.min(), gmacs.max(), count):
        distance = np.where(used, np.inf, np.abs(gmacs - target))
        nearest = np.argsort(distance, kind="stable")[:CANDIDATES_PER_TARGET]
        pick = int(rng.choice(nearest))
        used[pick] = True
        chosen.append(archs[pick])
    return chosen


def standalone_name(arch):
    """Run folder name of a standalone subnet: standalone_<9 digits>."""
    return "standalone_" + supernet.format_arch(arch).replace(",", "")


def train_standalone(supernet_dir, arch, standalone_dir):
    """Train `arch` alone with the supernet run's config (data, input size, batch, schedule, number
    of updates), unless already done; a run interrupted earlier is resumed. Returns its folder."""
    name = standalone_name(arch)
    run_dir = os.path.join(standalone_dir, name)
    if os.path.exists(os.path.join(run_dir, "train_report.json")):
        return run_dir
    # the supernet's saved config is already resolved: fast_mode must not apply its overrides again
    flags = ["--output_dir", standalone_dir, "--experiment_name", name, "--no-fast_mode"]
    if os.path.exists(os.path.join(run_dir, "checkpoints", "last", ckpt.META_NAME)):
        argv = ["--resume"] + flags
    else:
        argv = ["--config", os.path.join(supernet_dir, "config.json"), "--arch", supernet.format_arch(arch)] + flags
    if train.main(argv) != 0:
        raise RankError(f"standalone training of {supernet.format_arch(arch)} failed (see {run_dir}/train.log)")
    return run_dir


# ----------------------------------------------------------------------------- runs

def read_run(run_dir):
    """(config, train_report) of a finished run, or RankError naming the folder."""
    try:
        cfg = ckpt.read_json(os.path.join(run_dir, "config.json"), "run config")
        report = ckpt.read_json(os.path.join(run_dir, "train_report.json"), "train report (is the run finished?)")
    except ckpt.CheckpointError as err:
        raise RankError(str(err)) from None
    return cfg, report


def data_identity(cfg):
    """What two runs must share to have seen the same data at the same size."""
    keys = ["input_h", "input_w", "synthetic", "base_path", "data_layout"]
    if cfg["synthetic"] or not cfg["base_path"]:
        keys += ["seed", "synthetic_train_size", "synthetic_val_size"]  # synthetic pairs are drawn from these
    return {k: cfg.get(k) for k in keys}


def check_standalone_runs(supernet_cfg, supernet_report, run_dirs):
    """[(run_dir, arch)] after checking each run is standalone, finished and saw the supernet's data
    at its input size; RankError names the first run that does not."""
    if len(run_dirs) < MIN_ARCHS:
        raise RankError(f"{len(run_dirs)} standalone runs given; at least {MIN_ARCHS} are needed to rank")
    expected, runs, seen = data_identity(supernet_cfg), [], {}
    for run_dir in run_dirs:
        cfg, report = read_run(run_dir)
        if not cfg.get("arch") or report.get("mode") != "standalone":
            raise RankError(f"{run_dir} is not a standalone run (train.py --arch CODE)")
        if report["data_source"] != supernet_report["data_source"]:
            raise RankError(f"{run_dir}: data source {report['data_source']} differs from the supernet's "
                            f"{supernet_report['data_source']}")
        differing = [f"{k} {cfg.get(k)!r} (supernet {v!r})" for k, v in expected.items() if cfg.get(k) != v]
        if differing:
            raise RankError(f"{run_dir}: not the supernet's data or input size: {', '.join(differing)}")
        arch = supernet.parse_arch(cfg["arch"])
        if arch in seen:
            raise RankError(f"{run_dir} and {seen[arch]} both train {cfg['arch']}: one run per arch")
        seen[arch] = run_dir
        runs.append((run_dir, arch))
    return runs


# ----------------------------------------------------------------------------- scoring

def score_per_batch(sess, scorer, arch, recal_batches, val_batches):
    """EPE of one subnet on each validation batch (its BN recalibrated on the same batches each time,
    which gives the same statistics every time: recalibration overwrites them)."""
    return [evaluate.score_subnet(sess, scorer, arch, recal_batches, [batch])["epe"] for batch in val_batches]


def score_archs(run_dir, archs, checkpoint_type, batches, h, w, standalone=False):
    """{arch: per-batch EPEs} of `archs` held by one run's checkpoint: a supernet (dynamic graph)
    or a standalone run (`standalone`: the static graph of its one subnet)."""
    recal_batches, val_batches = batches
    static = archs[0] if standalone else None
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.INPUT_CHANNELS], "images")
        flows = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.FLOW_CHANNELS], "flows")
        scorer = evaluate.build_scorer(images, flows, static_arch=static)
        saver = tf.compat.v1.train.Saver(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
    with tf.compat.v1.Session(graph=graph) as sess:
        ckpt.restore(sess, saver, run_dir, checkpoint_type, h, w)
        return {arch: score_per_batch(sess, scorer, arch, recal_batches, val_batches) for arch in archs}


def batch_weighted_epe(per_batch, sizes):
    """EPE over the whole validation set from per-batch EPEs (every batch has the same pixels per sample)."""
    return float(np.dot(per_batch, sizes) / np.sum(sizes))


# ----------------------------------------------------------------------------- the report

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
            return {int(r["epoch"]): float(r[column]) for r in csv.DictReader(f)}
    except (OSError, KeyError, ValueError) as err:
        raise RankError(f"{path}: no {column} history: {err}") from None


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
    lines += [f"standalone after epoch {r['epoch']}: tau-b against its final order {r['tau_vs_final_standalone']:.3f}, "
              f"against the supernet {r['tau_vs_supernet']:.3f}" for r in report.get("training_length", [])]
    return lines


def fmt(value):
    """A figure with 3 decimals, or n/a."""
    return "n/a" if value is None else f"{value:.3f}"


def plot_ranking(report, path):
    """rank.png: supernet EPE against standalone EPE, one labelled point per arch, and the same
    archs by rank with the identity line (perfect agreement) drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = report["archs"]
    fig, (ax_epe, ax_rank) = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, (xkey, ykey, what) in zip((ax_epe, ax_rank), (("standalone_epe", "supernet_epe", "EPE"),
                                                          ("standalone_rank", "supernet_rank", "rank"))):
        ax.scatter([r[xkey] for r in rows], [r[ykey] for r in rows], c=[r["gmacs"] for r in rows], cmap="viridis")
        for r in rows:
            ax.annotate(r["arch"].replace(",", ""), (r[xkey], r[ykey]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel(f"standalone {what}")
        ax.set_ylabel(f"supernet {what}")
    ax_rank.plot([1, len(rows)], [1, len(rows)], "k--", lw=0.8, label="identity of ranks")
    ax_rank.legend(loc="upper left")
    boot = report["bootstrap"]
    fig.suptitle(f"Kendall tau-b {report['kendall_tau_b']:.3f} [{boot['tau_ci95'][0]:.2f}, {boot['tau_ci95'][1]:.2f}], "
                 f"Spearman rho {report['spearman_rho']:.3f}, {len(rows)} subnets (colour: GMACs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI

def parse_args(argv):
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", help="the supernet run folder")
    parser.add_argument("--standalone", nargs="+", default=[], metavar="RUN", help="standalone run folders")
    parser.add_argument("--standalone_glob", help="a glob of standalone run folders (quote it)")
    parser.add_argument("--train", type=int, metavar="K", help="choose K archs spread over GMACs and train each "
                        "alone (train.py --arch) with the supernet's config, unless already trained, then rank them")
    parser.add_argument("--standalone_dir", help="where --train puts its runs (default: <supernet>/standalone)")
    parser.add_argument("--out", help="folder for rank_report.json and rank.png (default: --standalone_dir with "
                        "--train, else <supernet>/rank)")
    parser.add_argument("--checkpoint_type", default="best", choices=ckpt.CHECKPOINT_KINDS)
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over the archs")
    parser.add_argument("--seed", type=int, default=0, help="seeds the arch choice and the bootstrap")
    parser.add_argument("--compare", nargs=2, metavar=("A.csv", "B.csv"),
                        help="only compare two search results (scores.csv): tau-b and rho on their shared archs")
    args = parser.parse_args(argv)
    if not args.compare and not args.supernet:
        parser.error("--supernet is required (or --compare A.csv B.csv)")
    if args.supernet and sum(bool(v) for v in (args.standalone, args.standalone_glob, args.train)) != 1:
        parser.error("give exactly one of --standalone, --standalone_glob, --train")
    if args.train is not None and args.train < MIN_ARCHS:
        parser.error(f"--train needs at least {MIN_ARCHS} archs")
    if args.bootstrap < 1:
        parser.error("--bootstrap must be >= 1")
    return args


def standalone_runs(args, supernet_cfg):
    """The standalone run folders to rank: given, globbed, or chosen and trained (--train)."""
    if args.train:
        archs = choose_archs(args.train, args.seed, supernet_cfg["input_h"], supernet_cfg["input_w"])
        print("standalone subnets, spread over GMACs: " + " ".join(supernet.format_arch(a) for a in archs))
        return [train_standalone(args.supernet, arch, args.standalone_dir) for arch in archs]
    if args.standalone_glob:
        found = sorted(p for p in glob.glob(args.standalone_glob) if os.path.isdir(p))
        if not found:
            raise RankError(f"--standalone_glob {args.standalone_glob!r} matches no folder")
        return found
    return args.standalone


def rank(args):
    """Score every standalone arch with the supernet and alone; write rank_report.json and rank.png."""
    start, hardware = time.time(), devices.report()
    supernet_cfg, supernet_report = read_run(args.supernet)
    if supernet_cfg.get("arch"):
        raise RankError(f"--supernet {args.supernet} is a standalone run of {supernet_cfg['arch']}, not a supernet")
    args.standalone_dir = args.standalone_dir or os.path.join(args.supernet, "standalone")
    # ordered by arch code, so the seeded bootstrap does not depend on the order the runs were given in
    runs = sorted(check_standalone_runs(supernet_cfg, supernet_report, standalone_runs(args, supernet_cfg)),
                  key=lambda run: run[1])
    h, w = supernet_cfg["input_h"], supernet_cfg["input_w"]
    batches = evaluate.scoring_batches(supernet_cfg, data_fc2.open_data(supernet_cfg))
    sizes = [len(flows) for _, flows in batches[1]]
    print(f"scoring {len(runs)} subnets with the supernet and alone: {len(batches[0])} recalibration batches, "
          f"{sum(sizes)} validation samples in {len(sizes)} batches")
    archs = [arch for _, arch in runs]
    by_supernet = score_archs(args.supernet, archs, args.checkpoint_type, batches, h, w)
    alone = [score_archs(run_dir, [arch], args.checkpoint_type, batches, h, w, standalone=True)[arch]
             for run_dir, arch in runs]
    rows = [{"arch": supernet.format_arch(arch), "run": run_dir, "gmacs": supernet.count_macs(arch, h, w) / 1e9,
             "params": supernet.count_params(arch, h, w), "standalone_updates": read_run(run_dir)[1]["global_step"],
             "supernet_epe": batch_weighted_epe(by_supernet[arch], sizes),
             "standalone_epe": batch_weighted_epe(epes, sizes)}
            for (run_dir, arch), epes in zip(runs, alone)]
    report = build_report(rows, [by_supernet[a] for a in archs], alone, sizes, args.bootstrap, args.seed)
    report["training_length"] = training_length_figures([read_history(d, a) for d, a in runs],
                                                        [r["supernet_epe"] for r in rows])
    report.update(supernet=args.supernet, supernet_updates_per_option=supernet_report["global_step"],
                  checkpoint_type=args.checkpoint_type, data_source=supernet_report["data_source"],
                  input_size=[h, w], zero_flow_epe=evaluate.zero_flow_epe(batches[1]), seconds=time.time() - start,
                  devices=hardware)
    out = args.out or (args.standalone_dir if args.train else os.path.join(args.supernet, "rank"))
    os.makedirs(out, exist_ok=True)
    ckpt.write_json_atomic(os.path.join(out, "rank_report.json"), report)
    plot_ranking(report, os.path.join(out, "rank.png"))
    print("\n".join(table_lines(report)))
    print(f"wrote {os.path.join(out, 'rank_report.json')} and rank.png")
    return report


def print_comparison(path_a, path_b):
    """--compare: Kendall tau-b and Spearman rho of two scores.csv files on the archs both hold."""
    result = compare_scores(path_a, path_b)
    print(f"{result['shared_archs']} shared archs ({result['only_a']} only in A, {result['only_b']} only in B): "
          f"Kendall tau-b {result['kendall_tau_b']:.4f}, Spearman rho {result['spearman_rho']:.4f}")


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad input."""
    args = parse_args(argv)
    return evaluate.exit_code(print_comparison, *args.compare) if args.compare else evaluate.exit_code(rank, args)


if __name__ == "__main__":
    sys.exit(main())
