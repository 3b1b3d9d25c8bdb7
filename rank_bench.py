"""The ranking benchmark kept in the repository (`rankbench/`): a plan fixed before any row is
trained (setting, scoring protocol, archs and the rule that chose them, a fingerprint of training),
one row per subnet trained alone (EPE, stopping figures, per-pair validation errors, the commit that
trained it), written atomically as each run ends, and which rows are still to train.

Rows are only comparable while training, data and the space are unchanged: the fingerprint (the
mean loss of the first steps of one arch, to 1e-6) says when they go stale.
"""
import hashlib
import json
import os
import subprocess

import numpy as np

import atomic_files
import config
import ranking
import supernet
from errors import RankError

PLAN_NAME, SETTING_NAME, ROWS_DIR = "plan.json", "setting.json", "rows"
GRID = 6  # the added archs' targets: a GRID x GRID grid of (mean depth choice, mean kernel choice)
GMACS_BANDS = 12  # equal-count GMACs bands of the space the added archs are spread over
ROW_KEYS = ("name", "arch", "seed", "epe", "pair_epe", "stopping", "steps", "wall_time_s", "commit", "command")


def row_name(arch, seed):
    """A row's name and run folder name: the arch's digits and the training seed (000000000_s42)."""
    return f"{supernet.format_arch(arch).replace(',', '')}_s{seed}"


def gmacs_bands(archs, h, w, bands=GMACS_BANDS):
    """Each arch's GMACs band: 0 .. bands-1 over equal-count bands of the whole space at h x w."""
    space = [supernet.index_to_arch(i) for i in range(supernet.SPACE.num_archs)]
    macs = np.array([supernet.count_macs(a, h, w) for a in space], float)
    quantile = np.argsort(np.argsort(macs, kind="stable"), kind="stable") / (len(space) - 1)
    band = np.minimum((quantile * bands).astype(int), bands - 1)
    index = {arch: i for i, arch in enumerate(space)}
    return band[[index[tuple(a)] for a in archs]] if archs is not None else band


def choose_bench_archs(first_count, first_seed, seed, h, w):
    """The bench's archs: the first study's `first_count` (ranking.choose_archs(first_count,
    first_seed)), then GRID*GRID more. Each added arch answers a target on a grid of (mean depth
    choice, mean kernel choice) at the centres of GRID equal steps of 0..1; among the
    ranking.CANDIDATES_PER_TARGET unused archs nearest it, the one whose GMACs band (of GMACS_BANDS
    equal-count bands of the space at h x w) holds the fewest chosen archs so far, ties drawn with
    `seed`. So the archs spread over depth, over kernels and over cost, each on its own."""
    space = [supernet.index_to_arch(i) for i in range(supernet.SPACE.num_archs)]
    scores = ranking.choice_scores(space)
    band = gmacs_bands(None, h, w)
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
    return plan


def setting_path(bench_dir):
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


def train_argv(bench_dir, row, runs_dir):
    """train.py's flags that train one row from scratch (the row's recorded command)."""
    return ["--config", setting_path(bench_dir), "--arch", row["arch"], "--seed", str(row["seed"]),
            "--output_dir", runs_dir, "--experiment_name", row["name"]]


def row_path(bench_dir, name):
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


def git_commit(where):
    """The commit checked out at `where`, with '+changes' if the tracked files differ from it; None
    outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
