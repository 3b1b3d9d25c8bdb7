"""The ranking benchmark kept in the repository (`rankbench/`): a plan fixed before any row is
trained (setting, scoring protocol, archs and the rule that chose them, a fingerprint of training),
one row per subnet trained alone (EPE, stopping figures, per-pair validation errors, the commit that
trained it), written atomically as each run ends (bench_chunks.py trains them), and a supernet's
order, regret and the seed ceiling against them.

Rows are only comparable while training, data and the space are unchanged: the fingerprint (the
mean loss of the first steps of one arch, to 1e-6) says when they go stale.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import atomic_files
import batches
import config
import data_fc2
import devices
import errors
import metrics
import parallel
import ranking
import scoring
import stopping
import supernet
import tensorflow_quiet
import training
from tensorflow_quiet import tf
from errors import RankError

PLAN_NAME, SETTING_NAME, ROWS_DIR = "plan.json", "setting.json", "rows"
GRID = 6  # the added archs' targets: a GRID x GRID grid of (mean depth choice, mean kernel choice)
GMACS_BANDS = 12  # equal-count GMACs bands of the space the added archs are spread over
DEFAULT_RUNS_DIR = os.path.join("outputs", "rankbench")  # where rows train unless rank.py --runs_dir says
ROW_KEYS = ("name", "arch", "seed", "epe", "pair_epe", "stopping", "steps", "wall_time_s", "commit", "command")


def row_name(arch, seed):
    """A row's name and run folder name: the arch's digits and the training seed (000000000_s42)."""
    return f"{supernet.format_arch(arch).replace(',', '')}_s{seed}"


def gmacs_bands(h, w, bands=GMACS_BANDS):
    """Every arch of the space's GMACs band, by arch index: 0 .. bands-1 over equal-count bands at h x w."""
    macs = np.array([supernet.count_macs(supernet.index_to_arch(i), h, w) for i in range(supernet.SPACE.num_archs)])
    quantile = np.argsort(np.argsort(macs, kind="stable"), kind="stable") / (len(macs) - 1)
    return np.minimum((quantile * bands).astype(int), bands - 1)


def choose_bench_archs(first_count, first_seed, seed, h, w):
    """The bench's archs: the first study's `first_count` (ranking.choose_archs(first_count,
    first_seed)), then GRID*GRID more. Each added arch answers a target on a grid of (mean depth
    choice, mean kernel choice) at the centres of GRID equal steps of 0..1; among the
    ranking.CANDIDATES_PER_TARGET unused archs nearest it, the one whose GMACs band (of GMACS_BANDS
    equal-count bands of the space at h x w) holds the fewest chosen archs so far, ties drawn with
    `seed`. So the archs spread over depth, over kernels and over cost, each on its own."""
    space = [supernet.index_to_arch(i) for i in range(supernet.SPACE.num_archs)]
    scores = ranking.choice_scores(space)
    band = gmacs_bands(h, w)
    index = {arch: i for i, arch in enumerate(space)}
    chosen = [index[tuple(a)] for a in ranking.choose_archs(first_count, first_seed)]
    used = np.zeros(len(space), bool)
    used[chosen] = True
    rng = np.random.default_rng(seed)
    levels = (np.arange(GRID) + 0.5) / GRID
    for depth in levels:
        for kernel in levels:
            distance = np.where(used, np.inf, np.hypot(scores[:, 0] - depth, scores[:, 1] - kernel))
            near = np.argsort(distance, kind="stable")[:ranking.CANDIDATES_PER_TARGET]
            filled = np.bincount(band[chosen], minlength=GMACS_BANDS)[band[near]]
            pick = int(rng.choice(near[filled == filled.min()]))
            used[pick] = True
            chosen.append(pick)
    return [space[i] for i in chosen]


def second_seed_archs(first_archs, count, h, w):
    """`count` of the first study's archs for a second seed: evenly spaced in their GMACs order
    (the lightest and the heaviest among them)."""
    by_cost = sorted(first_archs, key=lambda a: (supernet.count_macs(a, h, w), a))
    return [by_cost[i] for i in np.linspace(0, len(by_cost) - 1, count).round().astype(int)]


def make_plan(setting, rule):
    """The plan: the rows to train in order (the first study's archs, their second seeds, the added
    archs) from the arch rule `rule` and the setting (a config overlay)."""
    h, w = setting["input_h"], setting["input_w"]
    archs = choose_bench_archs(rule["first_count"], rule["first_seed"], rule["seed"], h, w)
    seconds = second_seed_archs(archs[:rule["first_count"]], rule["second_seeds"], h, w)
    first_seed, second_seed = rule["training_seeds"]
    order = ([(a, first_seed) for a in archs[:rule["first_count"]]] + [(a, second_seed) for a in seconds]
             + [(a, first_seed) for a in archs[rule["first_count"]:]])
    return [{"name": row_name(a, s), "arch": supernet.format_arch(a), "seed": s,
             "gmacs": supernet.count_macs(a, h, w) / 1e9} for a, s in order]


def read_plan(bench_dir):
    """The bench's plan.json, with its setting read and checked against the recorded digest;
    RankError naming the file otherwise."""
    path = os.path.join(bench_dir, PLAN_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
    except OSError as err:
        raise RankError(f"--bench {bench_dir}: no readable {PLAN_NAME} ({err.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RankError(f"{path}: not a JSON plan ({err})") from None
    if not isinstance(plan, dict) or not all(k in plan for k in ("rows", "setting", "scoring", "space_version")):
        raise RankError(f"{path}: needs rows, setting, scoring and space_version")
    supernet.check_space_version(plan["space_version"], path)
    if setting_digest(bench_dir) != plan["setting"]["sha256"]:
        raise RankError(f"{os.path.join(bench_dir, SETTING_NAME)}: changed since the plan was fixed "
                        "(its sha256 differs from plan.json's): the rows were trained on the recorded one")
    if not setting_config(bench_dir)["steps_per_epoch"]:
        raise RankError(f"{setting_path(bench_dir)}: steps_per_epoch must be set (> 0): a row trains a fixed "
                        "number of steps, whatever the size of its data")
    return plan


def setting_path(bench_dir):
    """The bench's setting file (a config overlay)."""
    return os.path.join(bench_dir, SETTING_NAME)


def setting_digest(bench_dir):
    """sha256 of the setting file's bytes."""
    try:
        with open(setting_path(bench_dir), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as err:
        raise RankError(f"{setting_path(bench_dir)}: cannot be read ({err.strerror})") from None


def setting_config(bench_dir):
    """The full resolved training config of the bench's setting (config.json under setting.json)."""
    defaults = config.read_config_file(config.DEFAULT_CONFIG)
    return config.merge_config(defaults, config.read_config_file(setting_path(bench_dir)), setting_path(bench_dir))


def recorded_command(bench_dir, row):
    """The command a row records: the one that trains it from the repository root, into the default runs
    folder (where a run is written does not change what it trains, and the row stays free of this machine's
    paths)."""
    bench_name = os.path.basename(os.path.normpath(bench_dir))
    return " ".join(["taskset -c 0 python train.py"] + train_argv(bench_name, row, DEFAULT_RUNS_DIR))


def train_argv(bench_dir, row, runs_dir):
    """train.py's flags that train one row from scratch (the row's recorded command)."""
    return ["--config", setting_path(bench_dir), "--arch", row["arch"], "--seed", str(row["seed"]),
            "--output_dir", runs_dir, "--experiment_name", row["name"]]


def row_path(bench_dir, name):
    """Where row `name` is written."""
    return os.path.join(bench_dir, ROWS_DIR, f"{name}.json")


def read_rows(bench_dir, plan):
    """{name: row} of the rows written, each checked against the plan (its arch and seed) and for the
    fields a row holds; RankError naming the file otherwise."""
    by_name = {r["name"]: r for r in plan["rows"]}
    rows = {}
    folder = os.path.join(bench_dir, ROWS_DIR)
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not entry.endswith(".json"):
            continue
        path = os.path.join(folder, entry)
        try:
            with open(path, encoding="utf-8") as f:
                row = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RankError(f"{path}: not a readable row ({err})") from None
        name = entry[:-len(".json")]
        planned = by_name.get(name)
        if planned is None:
            raise RankError(f"{path}: {name} is not a row of the plan")
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise RankError(f"{path}: lacks {', '.join(missing)}")
        if (row["arch"], row["seed"], row["name"]) != (planned["arch"], planned["seed"], name):
            raise RankError(f"{path}: holds {row['arch']} seed {row['seed']}, the plan's {name} is "
                            f"{planned['arch']} seed {planned['seed']}")
        if len(row["pair_epe"]) != plan["scoring"]["val_pairs"] or not np.all(np.isfinite(row["pair_epe"])):
            raise RankError(f"{path}: pair_epe must hold {plan['scoring']['val_pairs']} finite errors")
        rows[name] = row
    return rows


def missing_rows(plan, rows):
    """The plan's rows not yet written, in the plan's order."""
    return [r for r in plan["rows"] if r["name"] not in rows]


def write_row(bench_dir, row):
    """One row, atomically (the rows folder made if needed)."""
    os.makedirs(os.path.join(bench_dir, ROWS_DIR), exist_ok=True)
    atomic_files.write_atomic(row_path(bench_dir, row["name"]), json.dumps(row, indent=1) + "\n")


# ----------------------------------------------------------------------------- rows from finished runs

def scoring_data(bench_dir, plan):
    """(recal_batches, val_batches) of the plan's scoring protocol: the setting's data, recalibrated on
    the first `bn_recal_batches` of its seeded training batches, scored on its validation pairs."""
    cfg = dict(setting_config(bench_dir), bn_recal_batches=plan["scoring"]["bn_recal_batches"])
    scored = batches.scoring_batches(cfg, data_fc2.open_data(cfg))
    pairs = sum(len(b[0]) for b in scored[1])
    if pairs != plan["scoring"]["val_pairs"]:
        raise RankError(f"{setting_path(bench_dir)}: gives {pairs} validation pairs, the plan scores "
                        f"{plan['scoring']['val_pairs']}")
    return scored


def pair_epes(run_dir, arch, checkpoint_type, scored, standalone=True):
    """Each validation pair's EPE of `arch` held by a run's checkpoint, recalibrated on the recal
    batches: a standalone run (its static graph) or a supernet (the dynamic graph)."""
    recal_batches, val_batches = scored
    h, w = val_batches[0][0].shape[1:3]
    with scoring.restored_scorer(run_dir, checkpoint_type, h, w, static_arch=arch if standalone else None,
                                 input_size=(h, w)) as (sess, scorer, _):
        sums = scoring.score_subnet(sess, scorer, arch, recal_batches, val_batches)["sample_epe"]
    return np.asarray(sums, np.float64) / metrics.sample_pixels(val_batches)


def run_row(bench_dir, plan, planned, run_dir, scored):
    """The row of a finished standalone run: its best checkpoint scored by the plan's protocol, its
    stopping figures, steps, wall time and the commit and command that trained it."""
    arch = supernet.parse_arch(planned["arch"])
    cfg, report = ranking.read_run(run_dir)
    if cfg.get("arch") != planned["arch"] or cfg.get("seed") != planned["seed"]:
        raise RankError(f"{run_dir}: trains {cfg.get('arch')} seed {cfg.get('seed')}, not the plan's "
                        f"{planned['arch']} seed {planned['seed']}")
    pairs = pair_epes(run_dir, arch, plan["scoring"]["checkpoint"], scored)
    zero_flow = metrics.zero_flow_epe(scored[1])
    with open(run_dir + ".commit", encoding="utf-8") as f:
        commit = f.read().strip()
    return {"name": planned["name"], "arch": planned["arch"], "seed": planned["seed"], "gmacs": planned["gmacs"],
            "epe": float(pairs.mean()), "zero_flow_epe": zero_flow,
            "stopping": stopping.figures(ranking.read_history(run_dir, arch), zero_flow),
            "steps": report["global_step"], "best_epoch": report["best_epoch"],
            "stop_reason": report["stop_reason"], "wall_time_s": report["wall_time_s"],
            "commit": commit,
            "command": recorded_command(bench_dir, planned),
            "scoring": plan["scoring"], "tensorflow": tf.__version__,
            "pair_epe": [round(float(v), 6) for v in pairs]}


# ----------------------------------------------------------------------------- fingerprint

def training_fingerprint(bench_dir, arch, seed, steps):
    """The losses of the first `steps` training steps of `arch` alone in the bench's setting, from a
    fresh initialisation, on a training set of just the pairs they read (drawing the setting's 8,192
    would take minutes): any change to training, data or the space moves them."""
    cfg = setting_config(bench_dir)
    cfg.update(arch=arch, seed=seed, experiment_name="fingerprint", synthetic_val_size=cfg["batch_size"],
               synthetic_train_size=steps * cfg["batch_size"])
    hardware = devices.report(1, allow_cpu=True, log=lambda line: None)
    with tempfile.TemporaryDirectory() as nowhere:  # prepare reads a run folder's history: none here
        run = training.prepare(cfg, nowhere, hardware, resume=False, dry_run=True)
    state, losses = run.state, []
    with tf.compat.v1.Session(graph=run.graph, config=tensorflow_quiet.session_config()) as sess:
        sess.run(run.init)
        for _ in range(steps):
            losses.append(float(training.train_step(sess, run, state)["loss"]))
    return losses


def pinned_fingerprint(bench_dir, arch, seed, steps):
    """training_fingerprint in a child process on one core, as the rows train: TensorFlow shares a
    step's sums among as many threads as the process has cores, and another count changes the last
    bits from the second step on (measured: 6e-6 at step 2, 0.04 by step 20)."""
    core = parallel.usable_cores()[0]
    argv = [sys.executable, os.path.abspath(__file__), "--fingerprint", bench_dir, "--arch", arch,
            "--seed", str(seed), "--steps", str(steps)]
    done = subprocess.run(argv, capture_output=True, text=True, env=tensorflow_quiet.child_environment(),
                          preexec_fn=lambda: os.sched_setaffinity(0, [core]))
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise RankError(f"training fingerprint failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(lines[-1])


def check_fingerprint(bench_dir, plan, tolerance=1e-6):
    """RankError unless this code's first training losses equal the plan's to `tolerance`: the rows
    were trained by another training step, data or space, and new rows would not be comparable."""
    recorded = plan["fingerprint"]
    now = pinned_fingerprint(bench_dir, recorded["arch"], recorded["seed"], len(recorded["losses"]))
    worst = max(abs(a - b) for a, b in zip(now, recorded["losses"]))
    if worst > tolerance:
        raise RankError(f"{os.path.join(bench_dir, PLAN_NAME)}: training has changed since its rows were trained "
                        f"(first losses differ by up to {worst:.2e}, more than {tolerance:g}): version the bench "
                        "(a new folder and plan) or train its rows again")
    return now


# ----------------------------------------------------------------------------- a supernet against the rows

REGRET_BAND = 0.10  # a cost band: the rows within +-10% of one row's GMACs


def ranked_and_second(plan, rows):
    """(rows ranked: one per arch, the first training seed's, by arch code; {arch: the second seed's
    row} for the archs trained twice)."""
    first, second = plan["rule"]["training_seeds"]
    ranked = sorted((r for r in rows.values() if r["seed"] == first), key=lambda r: r["arch"])
    return ranked, {r["arch"]: r for r in rows.values() if r["seed"] == second}


def paired_se(row_a, row_b):
    """Standard error of EPE(a) - EPE(b) over the validation pairs both rows were scored on."""
    return metrics.paired_se(row_a["pair_epe"], row_b["pair_epe"], np.ones(len(row_a["pair_epe"])))


def band_regrets(ranked, supernet_epe, band=REGRET_BAND, shortlist=1, chosen_by=None):
    """For each distinct cost band (the rows within +-band of a row's GMACs, two or more): the
    standalone EPE of the pick minus the band's best standalone EPE, in EPE and in paired SEs between
    the two rows. The pick: among the `shortlist` lowest supernet EPEs of the band (None: all of it),
    the lowest `chosen_by` {arch: EPE} (a refine stage's, or training alone's), by default the
    supernet's own lowest."""
    chosen_by = chosen_by or supernet_epe
    bands, seen = [], set()
    for centre in ranked:
        members = tuple(i for i, r in enumerate(ranked) if abs(r["gmacs"] - centre["gmacs"]) <= band * centre["gmacs"])
        if len(members) < 2 or members in seen:
            continue
        seen.add(members)
        short = sorted(members, key=lambda i: (supernet_epe[ranked[i]["arch"]], i))[:shortlist or len(members)]
        pick = min(short, key=lambda i: (chosen_by[ranked[i]["arch"]], i))
        best = min(members, key=lambda i: ranked[i]["epe"])
        regret = ranked[pick]["epe"] - ranked[best]["epe"]
        bands.append({"centre": centre["arch"], "gmacs": centre["gmacs"], "members": len(members),
                      "shortlist": len(short), "pick": ranked[pick]["arch"], "best": ranked[best]["arch"],
                      "regret": regret,
                      "regret_se": regret / paired_se(ranked[pick], ranked[best]) if pick != best else 0.0})
    regrets = [b["regret"] for b in bands]
    return {"band": band, "bands": bands, "mean": float(np.mean(regrets)) if bands else None,
            "max": float(np.max(regrets)) if bands else None,
            "mean_se": float(np.mean([b["regret_se"] for b in bands])) if bands else None,
            "pick_is_best": sum(b["pick"] == b["best"] for b in bands)}


def seed_ceiling(ranked, second, supernet_epe, bootstrap, seed):
    """Over the archs trained twice: tau-b between the two seeds' orders (what a perfect supernet
    could reach) with its interval, and the supernet's tau-b against the second seed; None below 3."""
    pairs = [(r, second[r["arch"]]) for r in ranked if r["arch"] in second]
    if len(pairs) < ranking.MIN_ARCHS:
        return None
    a, b = [p[0]["epe"] for p in pairs], [p[1]["epe"] for p in pairs]
    tau, rho = ranking.rank_correlations(a, b)
    return {"archs": len(pairs), "kendall_tau_b": tau, "spearman_rho": rho,
            "bootstrap": ranking.bootstrap_intervals(a, b, bootstrap, seed),
            "supernet_vs_second_seed": ranking.rank_correlations([supernet_epe[p[0]["arch"]] for p in pairs], b)[0],
            "seed_moves": {p[0]["arch"]: p[1]["epe"] - p[0]["epe"] for p in pairs}}


def what_orders_follow(ranked, orders):
    """Kendall tau-b of each order's EPEs (orders {name: {arch: EPE}}, then the rows' own, "alone") against each
    arch's design: GMACs, mean depth and mean kernel choice (0..1), and each block's option. {feature: {order:
    t}}; negative: the EPE falls as the feature grows; None where the rows do not vary the feature."""
    archs = [supernet.parse_arch(r["arch"]) for r in ranked]
    depth, kernel = ranking.choice_scores(archs).T
    features = {"GMACs": [r["gmacs"] for r in ranked], "depth": depth, "kernel": kernel}
    features.update({block: [a[i] for a in archs] for i, block in enumerate(supernet.SPACE.blocks)})
    epes = {name: [order[r["arch"]] for r in ranked] for name, order in orders.items()}
    epes["alone"] = [r["epe"] for r in ranked]
    return {name: {order: (ranking.rank_correlations(x, epe)[0] if len(set(x)) > 1 else None)
                   for order, epe in epes.items()} for name, x in features.items()}


def follows_lines(follows):
    """What each order follows as printed, a Markdown table: a row per feature (the design summaries, then each
    block), a column per order (the supernet first, alone last); by name, whatever the dicts' order."""
    orders = sorted(next(iter(follows.values())), key=lambda o: (o != "supernet", o == "alone", o))
    features = ("GMACs", "depth", "kernel") + tuple(supernet.SPACE.blocks)

    def tau(value):
        return "n/a" if value is None else f"{value:+.2f}"
    return ["what each order follows: Kendall tau-b of its EPEs against the design (negative: EPE falls as it grows)",
            "| EPE against | " + " | ".join(orders) + " |", "|---" * (len(orders) + 1) + "|"] + \
        [f"| {name} | " + " | ".join(tau(follows[name][o]) for o in orders) + " |" for name in features]


def check_supernet(bench_dir, supernet_dir, cfg):
    """RankError unless the run is a supernet trained on the bench's data at its input size."""
    if cfg.get("arch"):
        raise RankError(f"--supernet {supernet_dir} is a standalone run of {cfg['arch']}, not a supernet")
    mine, its = ranking.data_identity(setting_config(bench_dir)), ranking.data_identity(cfg)
    differ = sorted(k for k in mine if mine[k] != its.get(k))
    if differ:
        raise RankError(f"--supernet {supernet_dir}: trained on other data than the bench's {setting_path(bench_dir)} "
                        f"({', '.join(differ)} differ)")


def bench_report(plan, rows, supernet_epe, bootstrap, seed, refined=None):
    """The supernet's order (supernet_epe {arch code: EPE}) against the bench's rows: tau-b and rho
    with bootstrap intervals, top-1/3/5 overlap, the seed ceiling, regret in cost bands, what the rows
    still falling could change, and what its order, each refined one (refined {method: {arch: EPE}}) and
    the rows' own follow in the design."""
    ranked, second = ranked_and_second(plan, rows)
    if len(ranked) < ranking.MIN_ARCHS:
        raise RankError(f"the bench has {len(ranked)} ranked rows; at least {ranking.MIN_ARCHS} are needed")
    sup, alone = [supernet_epe[r["arch"]] for r in ranked], [r["epe"] for r in ranked]
    tau, rho = ranking.rank_correlations(sup, alone)
    table = [{"arch": r["arch"], "run": r["name"], "gmacs": r["gmacs"], "supernet_epe": s, "standalone_epe": a,
              "supernet_rank": float(rs), "standalone_rank": float(ra), "stopped": r["stopping"]["stopped"]}
             for r, s, a, rs, ra in zip(ranked, sup, alone, ranking.ranks(sup), ranking.ranks(alone))]
    falling = sorted(r["name"] for r in rows.values() if r["stopping"]["stopped"] is False)
    return {"rows": len(rows), "num_archs": len(ranked), "kendall_tau_b": tau, "spearman_rho": rho,
            "bootstrap": ranking.bootstrap_intervals(sup, alone, bootstrap, seed),
            "top_k_overlap": {str(k): v for k, v in ranking.top_k_overlap(sup, alone).items()},
            "seed_ceiling": seed_ceiling(ranked, second, supernet_epe, bootstrap, seed),
            "regret": band_regrets(ranked, supernet_epe), "still_falling": falling,
            "tau_if_improved": stopping.tau_range_if_improved(table, falling), "archs": table,
            "second_seed_runs": [{"arch": r["arch"], "standalone_epe": r["epe"]} for r in second.values()],
            "follows": what_orders_follow(ranked, {"supernet": supernet_epe, **(refined or {})})}


def report_lines(report):
    """The bench report as printed."""
    boot, regret, ceiling = report["bootstrap"], report["regret"], report["seed_ceiling"]
    lines = [f"{report['num_archs']} archs ranked ({report['rows']} rows): "
             f"Kendall tau-b {report['kendall_tau_b']:.3f} "
             f"[{boot['tau_ci95'][0]:.3f}, {boot['tau_ci95'][1]:.3f}], Spearman rho {report['spearman_rho']:.3f} "
             f"[{boot['rho_ci95'][0]:.3f}, {boot['rho_ci95'][1]:.3f}]",
             "top-k overlap: " + ", ".join(f"top-{k} {v:.2f}" for k, v in report["top_k_overlap"].items())]
    lines += follows_lines(report["follows"])
    if ceiling:
        lines.append(f"seed ceiling over {ceiling['archs']} archs trained twice: tau-b {ceiling['kendall_tau_b']:.3f} "
                     f"[{ceiling['bootstrap']['tau_ci95'][0]:.3f}, {ceiling['bootstrap']['tau_ci95'][1]:.3f}]; "
                     f"supernet against the second seed {ceiling['supernet_vs_second_seed']:.3f}")
    else:
        lines.append("seed ceiling: fewer than 3 archs trained twice")
    if regret["bands"]:
        lines.append(f"regret in {len(regret['bands'])} cost bands (+-{regret['band']:.0%} GMACs): mean "
                     f"{regret['mean']:.4f} EPE ({regret['mean_se']:.1f} paired SE), max {regret['max']:.4f}; "
                     f"the supernet's pick is the band's best in {regret['pick_is_best']} of {len(regret['bands'])}")
    else:
        lines.append(f"regret: no cost band (+-{regret['band']:.0%} GMACs around a row) holds two rows")
    if report["still_falling"]:
        bound = report["tau_if_improved"]
        lines.append(f"{len(report['still_falling'])} rows still falling: " + " ".join(report["still_falling"])
                     + (f"; had they ended better, tau-b {bound['kendall_tau_b'][0]:.3f} .. "
                        f"{bound['kendall_tau_b'][1]:.3f}" if bound else ""))
    return lines


def main(argv=None):
    """--fingerprint DIR: print the first training losses of an arch in the bench's setting (JSON)."""
    parser = errors.ArgumentParser(description=main.__doc__)
    parser.add_argument("--fingerprint", required=True, metavar="DIR", help="the bench folder")
    parser.add_argument("--arch", required=True, help="the arch code trained")
    parser.add_argument("--seed", type=int, required=True, help="its training seed")
    parser.add_argument("--steps", type=int, required=True, help="how many steps")
    args = parser.parse_args(argv)
    print(json.dumps(training_fingerprint(args.fingerprint, args.arch, args.seed, args.steps)))


if __name__ == "__main__":
    main()
