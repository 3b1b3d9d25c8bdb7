"""Building the ranking benchmark's rows (rank_bench.py owns the plan and the rows): the next rows the
bench lacks trained in chunks, one per core, each scored into its row as it finishes and its checkpoints
then dropped; a row trained again from its recorded command; the core-hours still to train. Every run
resumes after a kill, and no row is trained twice.
"""
import os
import shutil
import subprocess
import sys

import numpy as np

import atomic_files
import ckpt
import parallel
import rank_bench
import tensorflow_quiet
from errors import RankError, one_line


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


def commit_row(bench_dir, plan, planned, run_dir, scored):
    """Score a finished run, write its row, then drop its checkpoints (the row is what is kept)."""
    row = rank_bench.run_row(bench_dir, plan, planned, run_dir, scored)
    rank_bench.write_row(bench_dir, row)
    shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
    return row


def start_commit_file(run_dir, where):
    """Record the commit a row's training starts from (once: a resumed run keeps its first)."""
    path = run_dir + ".commit"
    if not os.path.exists(path):
        atomic_files.write_atomic(path, (git_commit(where) or "unknown") + "\n")


def run_finished(run_dir):
    """Whether a run has trained to its end (its report is written last)."""
    return os.path.exists(os.path.join(run_dir, "train_report.json"))


def row_child(bench_dir, planned, runs_dir, train_py):
    """(name, argv, log path) that trains one row: from scratch, or resumed from its last checkpoint."""
    run_dir = os.path.join(runs_dir, planned["name"])
    if os.path.exists(os.path.join(run_dir, "checkpoints", "last", ckpt.META_NAME)):
        flags = ["--resume", "--output_dir", runs_dir, "--experiment_name", planned["name"]]
    else:
        flags = rank_bench.train_argv(bench_dir, planned, runs_dir)
    return planned["name"], [sys.executable, train_py] + flags, run_dir + ".out"


def rows_minutes_left(bench_dir, planned_rows, runs_dir):
    """{name: the core-minutes a planned row has still to train} (row_minutes_left, its run in runs_dir)."""
    cfg = rank_bench.setting_config(bench_dir)
    steps = cfg["num_epochs"] * cfg["steps_per_epoch"]
    return {r["name"]: row_minutes_left(r, os.path.join(runs_dir, r["name"]), steps) for r in planned_rows}


def row_minutes_left(planned, run_dir, total_steps):
    """The core-minutes a row has still to train: row_core_minutes less the share of its
    `total_steps` its last checkpoint holds (a resumed run has done some)."""
    last = os.path.join(run_dir, "checkpoints", "last", ckpt.META_NAME)
    done = ckpt.read_json(last, "checkpoint meta").get("global_step", 0) if os.path.exists(last) else 0
    return row_core_minutes(planned) * max(1.0 - done / total_steps, 0.0)


class RowScorer:
    """Scores finished runs into rows as they land, the scoring batches drawn once, at the first; a
    row that fails to score is reported and left for the next chunk (its run is kept)."""

    def __init__(self, bench_dir, plan, runs_dir, log):
        self.bench_dir, self.plan, self.runs_dir, self.log = bench_dir, plan, runs_dir, log
        self.by_name, self.scored, self.failed = {r["name"]: r for r in plan["rows"]}, None, []

    def __call__(self, name):
        if self.scored is None:
            self.scored = rank_bench.scoring_data(self.bench_dir, self.plan)
        try:
            row = commit_row(self.bench_dir, self.plan, self.by_name[name], os.path.join(self.runs_dir, name),
                             self.scored)
        except Exception as err:  # noqa: BLE001 -- any failure: the other rows go on training, this one waits
            self.failed.append(name)
            self.log(f"row {name} not written: {one_line(err)}")
            return
        stop = row["stopping"]
        self.log(f"row {name} written: EPE {row['epe']:.4f}, stopped {stop['stopped']} "
                 f"({stop['last_two_pct']:.2f}% / {stop['last_pct']:.2f}%), {row['wall_time_s'] / 60:.1f} min")


def say(line):
    """Print one line at once: a chunk's log is usually a file, read while it runs."""
    print(line, flush=True)


def train_chunk(bench_dir, runs_dir, count, jobs, train_py, log=say):
    """Train the next `count` rows the bench lacks, `jobs` at once, each on one core (as the
    fingerprint and every row was: a core count changes the numerics), each scored into
    its row as it finishes; runs already finished are scored first. One chunk at a time per runs
    folder (a lock); the fingerprint is checked before anything trains. Returns the rows missing after."""
    plan = rank_bench.read_plan(bench_dir)
    with ckpt.writer_lock(runs_dir, "ranking benchmark runs"):
        missing = rank_bench.missing_rows(plan, rank_bench.read_rows(bench_dir, plan))
        log(f"{len(plan['rows']) - len(missing)} of {len(plan['rows'])} rows written; checking the training "
            "fingerprint")
        rank_bench.check_fingerprint(bench_dir, plan)
        score = RowScorer(bench_dir, plan, runs_dir, log)
        for planned in [r for r in missing if run_finished(os.path.join(runs_dir, r["name"]))]:
            score(planned["name"])
        todo = [r for r in missing if not run_finished(os.path.join(runs_dir, r["name"]))][:count]
        minutes = rows_minutes_left(bench_dir, todo, runs_dir)
        log(f"training {len(todo)} rows, {jobs} at a time: " + " ".join(r["name"] for r in todo)
            + f" (about {sum(minutes.values()) / 60:.1f} core-hours)")
        train_row_runs(bench_dir, todo, runs_dir, train_py, jobs, log, on_finished=score, work=minutes)
        left = rank_bench.missing_rows(plan, rank_bench.read_rows(bench_dir, plan))
    log(f"{len(plan['rows']) - len(left)} of {len(plan['rows'])} rows written, {len(left)} to train "
        f"(about {sum(rows_minutes_left(bench_dir, left, runs_dir).values()) / 60:.1f} core-hours)"
        + (f"; not scored: {' '.join(score.failed)}" if score.failed else ""))
    return left


def train_row_runs(bench_dir, planned_rows, runs_dir, train_py, jobs, log, **hooks):
    """Train the runs of `planned_rows` in runs_dir (row_child: from scratch or resumed), `jobs` at
    once, each pinned to one core, each recording the commit it starts from; hooks: parallel.run_all's
    on_finished and work."""
    os.makedirs(runs_dir, exist_ok=True)
    for planned in planned_rows:
        start_commit_file(os.path.join(runs_dir, planned["name"]), os.path.dirname(os.path.abspath(train_py)))
    parallel.run_all([row_child(bench_dir, r, runs_dir, train_py) for r in planned_rows], jobs, log=log,
                     cores=parallel.usable_cores()[:jobs], env=tensorflow_quiet.child_environment(), **hooks)


def reproduce_row(bench_dir, name, runs_dir, train_py, log=say):
    """Train row `name` again from its recorded command as a chunk trains a row (one core, resumed
    after a kill) into <runs_dir>/<name>_again, and score it by the plan's protocol: the recorded
    and the new EPE, their difference with its paired SE, the largest per-pair difference, and the
    seed differences the bench measures (second seed minus first, by arch). Written to
    <runs_dir>/<name>_again.json, then the run's checkpoints are dropped; returns it."""
    plan = rank_bench.read_plan(bench_dir)
    rows = rank_bench.read_rows(bench_dir, plan)
    if name not in rows:
        raise RankError(f"{rank_bench.row_path(bench_dir, name)}: no such row to reproduce")
    planned = dict(next(r for r in plan["rows"] if r["name"] == name), name=name + "_again")
    run_dir = os.path.join(runs_dir, planned["name"])
    recorded = rows[name]
    record = {"row": name, "recorded_epe": recorded["epe"], "recorded_commit": recorded["commit"],
              "setting_sha256": rank_bench.setting_digest(bench_dir)}
    aside = f"move {run_dir} and its .json, .commit and .out aside to train it again"
    if os.path.exists(run_dir + ".json"):
        kept = ckpt.read_json(run_dir + ".json", "reproduced row")
        if not isinstance(kept, dict) or {k: kept.get(k) for k in record} != record:
            raise RankError(f"{run_dir}.json: a reproduction of another record of {name} or another setting: {aside}")
        return kept
    if run_finished(run_dir) and not os.path.isdir(os.path.join(run_dir, "checkpoints")):
        raise RankError(f"{run_dir}: trained, but its checkpoints are gone and its result is not kept: {aside}")
    rank_bench.check_fingerprint(bench_dir, plan)
    if not run_finished(run_dir):
        train_row_runs(bench_dir, [planned], runs_dir, train_py, 1, log)
    again = rank_bench.run_row(bench_dir, plan, planned, run_dir, rank_bench.scoring_data(bench_dir, plan))
    ranked, second = rank_bench.ranked_and_second(plan, rows)
    result = {**record, "again_epe": again["epe"],
              "difference": again["epe"] - recorded["epe"], "paired_se": rank_bench.paired_se(again, recorded),
              "max_pair_difference": float(np.abs(np.subtract(again["pair_epe"], recorded["pair_epe"])).max()),
              "seed_differences": {r["arch"]: second[r["arch"]]["epe"] - r["epe"] for r in ranked
                                   if r["arch"] in second},
              "again": {k: again[k] for k in ("commit", "command", "stopping", "steps", "wall_time_s")}}
    atomic_files.write_json_atomic(run_dir + ".json", result)
    shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
    return result


def row_core_minutes(planned):
    """A row's training time on one core of a 2-core CPU, from its GMACs (measured at batch 8: all-0,
    0.278 GMAC, 13.6 min; all-2, 0.770 GMAC, 33.9 min; linear between)."""
    return 13.6 + (planned["gmacs"] - 0.278) * (33.9 - 13.6) / (0.770 - 0.278)
