"""The refine stage: a supernet's best candidates fine-tuned from its weights, then scored again.

A supernet orders its subnets largely by its own bias; among candidates it cannot tell apart, a
few steps of training each alone from the supernet's best weights (`train.py --arch A --init_from
RUN`) say which is better. Candidates come from a finished search (the K lowest supernet EPE on its
EPE/GMACs front, or among all it scored, within a budget) or from a deployment's board front at one
input size (the search at that size holds their scores). Each is trained in a child process, a few
at a time, each pinned to one core (parallel.run_all), and scored on the very batches the search
scored it on (their fingerprint is checked against the search's), so supernet and refined EPEs and
their paired standard errors compare.

Files, under <run>/refine/: runs/<digits>_n<steps>_e<epochs>/ (the children, each with a .out log;
shared by every source, since a child trains at the run's input size whatever size it is scored at),
source.json (the supernet checkpoint they start from), and per source (<search folder name>, or
deploy_<target>_<h>x<w>): scores.json (each refined checkpoint's per-pair EPE sums, so that a report
is rebuilt the same), refine_report.json and refine.png. Anything killed resumes: finished children
are not trained again, a half-trained one resumes from its last epoch, a scored one is not scored again.
"""
import os
import sys
import time
import types

import numpy as np

import atomic_files
import batches
import ckpt
import config
import data_fc2
import metrics
import noise_choice
import parallel
import pareto
import runs
import scoring
import search_parts
import supernet
import tensorflow_quiet
from errors import RefineError, SearchError

REFINE_DIR, RUNS_DIR = "refine", "runs"
SOURCE_NAME, SCORES_NAME, REPORT_NAME, PICTURE_NAME = "source.json", "scores.json", "refine_report.json", "refine.png"
KIND = "best"  # what a child inherits (training.init_source) and so what its candidates must be scored from
NOISE_Z = config.defaults()["deploy"]["choice_noise_se"]  # the paired SEs within which two EPEs are not told apart


# ----------------------------------------------------------------------------- where candidates come from

def read_search(search_dir):
    """(manifest, rows sorted by EPE, {code: row}) of a finished search; RefineError naming it otherwise."""
    try:
        manifest, scores, _ = search_parts.load_parts(search_dir)
    except SearchError as err:
        raise RefineError(f"search {search_dir}: {err}") from None
    h, w = manifest["scored_size"] or manifest["input_size"]
    rows = pareto.table_rows(scores, h, w)
    return manifest, rows, {r["arch"]: r for r in rows}


def choose_candidates(pool, limits, top, what):
    """The `top` lowest-EPE rows of `pool` within the budget `limits` (pareto.budget_limits), best
    first; RefineError naming the budget when none is within it. `what`: the pool's name, for that."""
    within = sorted(pareto.within_budget(pool, limits), key=lambda r: (r["epe"], r["arch"]))
    if not within:
        raise RefineError(f"no {what} within the budget ({pareto.budget_wording(limits)})")
    return within[:top]


def search_source(search_dir, limits, top, on_front=True):
    """The candidates of a finished search: the `top` lowest supernet EPE within the budget, on the
    EPE/GMACs front (on_front) or among every subnet it scored."""
    manifest, rows, by_code = read_search(search_dir)
    pool = pareto.pareto_front(rows, "gmacs") if on_front else rows
    what = "member of the search's EPE/GMACs front" if on_front else "subnet the search scored"
    return types.SimpleNamespace(name=os.path.basename(os.path.normpath(search_dir)), search_dir=search_dir,
                                 manifest=manifest, by_code=by_code, described=f"search {search_dir}",
                                 candidates=choose_candidates(pool, limits, top, what))


def deployment_search_dir(run_dir, kind, size, recal_at_size):
    """The search a deployment scored `size` with: the run's own at its own size unless deploy.py
    had to keep that size's search apart (deployment.search_dir), else search.py --size's folder."""
    sized = search_parts.size_search_dir(run_dir, kind, size, recal_at_size)
    own = search_parts.run_search_dir(run_dir, kind)
    return own if size == tuple(supernet_size(run_dir)) and not os.path.isdir(sized) else sized


def supernet_size(run_dir):
    """The run's input size, from its checkpoint's search-space signature."""
    return ckpt.load_meta(run_dir, KIND)["search_space"]["input_size"]


def deployment_source(run_dir, report_path, size, limits, top):
    """The candidates of a deployment (its deploy_report.json, or the folder holding it): the `top`
    lowest FP32 EPE of its board front at `size` (default: the size of its choice) within the budget,
    with their scores from the search at that size."""
    path = os.path.join(report_path, "deploy_report.json") if os.path.isdir(report_path) else report_path
    report = ckpt.read_json(path, "deployment report")
    try:
        size = tuple(size or report["input_size"])
        front = [m for m in report["front"] if tuple(m["size"]) == size]
        kind, recal_at = os.path.basename(os.path.dirname(report["checkpoint"])), report["settings"]["recal_at"]
    except (KeyError, TypeError) as err:
        raise RefineError(f"{path}: not a deployment report (field {err} missing or malformed)") from None
    if not front:
        sizes = sorted({f"{m['size'][0]}x{m['size'][1]}" for m in report["front"]})
        raise RefineError(f"{path}: its front has no member at {size[0]}x{size[1]} (it has {', '.join(sizes)})")
    search_dir = deployment_search_dir(run_dir, kind, size, recal_at == "deploy")
    manifest, _, by_code = read_search(search_dir)
    pool = [by_code[m["arch"]] for m in front]
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return types.SimpleNamespace(name=f"{folder}_{size[0]}x{size[1]}", search_dir=search_dir, manifest=manifest,
                                 by_code=by_code, described=f"the board front of {path} at {size[0]}x{size[1]}",
                                 candidates=choose_candidates(pool, limits, top, f"front member at {size}"))


# ----------------------------------------------------------------------------- the batches the search scored on

def check_search(source, best_meta):
    """RefineError unless the source's search scored the checkpoint the children inherit, on the run's own frames."""
    manifest = source.manifest
    if manifest["checkpoint_type"] != KIND or manifest["checkpoint"] != best_meta["checkpoint"]:
        raise RefineError(f"{source.search_dir} scored the {manifest['checkpoint_type']} checkpoint "
                          f"{manifest['checkpoint']}; refined candidates start from the run's best checkpoint "
                          f"{best_meta['checkpoint']}: search that one (search.py --checkpoint_type best)")
    if manifest["dataset"]["dataset"] != "fc2" or source.search_dir.endswith("_recal_at_size"):
        raise RefineError(f"{source.search_dir} scored {manifest['dataset']['dataset']} frames"
                          + (" with BN recalibrated at its size" if manifest["dataset"]["dataset"] == "fc2" else "")
                          + ": the refine stage rescores on the run's own frames, BN recalibrated at the run's size")


def search_batches(cfg, source):
    """(recal batches, validation batches) the source's search scored on, drawn again from the run's
    data with the search's scoring settings; RefineError when their fingerprint is not the search's."""
    manifest = source.manifest
    scoring_cfg = dict(cfg, **{key: manifest["config"][key] for key in runs.SCORING_FLAGS})
    if manifest["scored_size"]:
        base = batches.deployment_base(scoring_cfg, 1)
        scored = search_parts.size_inputs(scoring_cfg, base, tuple(manifest["scored_size"]), False)[0]
    else:
        recal, val = batches.scoring_batches(scoring_cfg, data_fc2.open_data(scoring_cfg))
        scored = recal, [batches.batch_parts(b) for b in val]
    if search_parts.batches_fingerprint(*scored) != manifest["batches_sha256"]:
        raise RefineError(f"{source.search_dir}: its batches cannot be drawn again from the run's data (their "
                          "sha256 differs from its manifest's): the data changed since the search")
    return scored


# ----------------------------------------------------------------------------- the children

def settings_tag(settings):
    """The refine settings in a name: n<steps>_e<epochs>, then _lr<scale> unless the learning rate is the
    supernet's (so children and kept scores named before the scale existed keep their names)."""
    tag = f"n{settings['steps']}_e{settings['epochs']}"
    return tag if settings["lr_scale"] == 1 else f"{tag}_lr{float(settings['lr_scale'])!r}"


def settings_label(settings):
    """The refine settings as the reports say them: refined 400 steps (at 0.1x the learning rate)."""
    label = f"refined {settings['steps']} steps"
    return label if settings["lr_scale"] == 1 else f"{label} at {float(settings['lr_scale'])!r}x lr"


def run_name(code, settings):
    """A child's folder name: the arch's digits and the settings' tag (000000000_n400_e4)."""
    return f"{code.replace(',', '')}_{settings_tag(settings)}"


def child(run_dir, code, runs_dir, settings, train_py):
    """(child run folder, train.py argv or None when it is finished): `code` trained alone from the
    supernet run's best weights with its config (data, input size, batch, learning rate times settings'
    lr_scale) for settings' steps, in settings' epochs, evaluated once at the end; a started one is resumed."""
    name = run_name(code, settings)
    child_dir = os.path.join(runs_dir, name)
    if os.path.exists(os.path.join(child_dir, "train_report.json")):
        return child_dir, None
    # the supernet's saved config is resolved already: fast_mode must not apply its overrides again
    flags = ["--output_dir", runs_dir, "--experiment_name", name, "--no-fast_mode"]
    if os.path.exists(os.path.join(child_dir, "checkpoints", "last", ckpt.META_NAME)):
        return child_dir, [sys.executable, train_py, "--resume"] + flags
    epochs = settings["epochs"]
    if settings["lr_scale"] != 1:
        flags += ["--learning_rate", repr(config.run_config(run_dir)["learning_rate"] * settings["lr_scale"])]
    return child_dir, [sys.executable, train_py, "--config", os.path.join(run_dir, "config.json"), "--arch", code,
                       "--init_from", run_dir, "--num_epochs", str(epochs),
                       "--steps_per_epoch", str(settings["steps"] // epochs), "--eval_every", str(epochs),
                       "--early_stop_patience", str(epochs), "--devices", "1", "--distribute", "none"] + flags


def child_dir_of(run_dir, code, settings):
    """The folder a candidate's child trains in: <run>/refine/runs/<run_name>."""
    return os.path.join(run_dir, REFINE_DIR, RUNS_DIR, run_name(code, settings))


def children_at_once(jobs, hardware, candidates):
    """(jobs, gpus): `jobs` children at once, or one per core (per GPU where devices.report lists
    GPUs), at most one per candidate; RefineError when more are asked than there are GPUs or cores."""
    gpus = len(hardware["gpus"])
    jobs = jobs or min(gpus or len(parallel.usable_cores()), candidates)
    if gpus and jobs > gpus:
        raise RefineError(f"--jobs {jobs}: more children than this machine's {gpus} GPUs (one per GPU)")
    if not gpus:
        parallel.slot_cores(jobs)  # at most one per core: a one-line error otherwise
    return jobs, gpus


def train_children(run_dir, codes, settings, at_once, train_py, described, log, on_finished):
    """Train a child of each of `codes` from the run's best weights (the caller holds the refine
    folder's writer lock): at_once (jobs, gpus) at a time, each on one core or its own GPU; finished
    children are not trained again, started ones resume. on_finished(child folder) is called for each
    as it is done (those done before first). Returns the children's folders in the order of `codes`."""
    jobs, gpus = at_once
    best_meta = ckpt.load_meta(run_dir, KIND)
    runs_dir = os.path.join(run_dir, REFINE_DIR, RUNS_DIR)
    check_start(os.path.dirname(runs_dir), best_meta)
    os.makedirs(runs_dir, exist_ok=True)
    children = [child(run_dir, code, runs_dir, settings, train_py) for code in codes]
    todo = [(child_dir, argv, child_dir + ".out") for child_dir, argv in children if argv]
    log(f"refining {len(codes)} candidates of {described}: {' '.join(codes)}; each {settings_label(settings)} "
        f"from {best_meta['prefix']}; {len(codes) - len(todo)} trained already, training {len(todo)}, "
        f"{jobs} at a time")
    for child_dir, argv in children:
        if not argv:
            on_finished(child_dir)
    # a child's time goes with its arch's MACs (the same steps and batch for all): the time left weighs them so
    work = {child_dir: supernet.count_macs(supernet.parse_arch(code))
            for code, (child_dir, argv) in zip(codes, children) if argv}
    parallel.run_all(todo, jobs, log=log, env=tensorflow_quiet.child_environment(), gpus=gpus,
                     cores=None if gpus else parallel.usable_cores()[:jobs], on_finished=on_finished, work=work)
    return [child_dir for child_dir, _ in children]


def check_start(refine_dir, best_meta):
    """Record the checkpoint the children start from (source.json), or RefineError if the runs
    there started from another: the supernet trained on since, and they would mix two starts."""
    path = os.path.join(refine_dir, SOURCE_NAME)
    if os.path.exists(path):
        recorded = ckpt.read_json(path, "refinement source")
        if not isinstance(recorded, dict) or recorded.get("checkpoint") != best_meta["checkpoint"]:
            raise RefineError(f"{path}: the refined runs started from checkpoint "
                              f"{recorded.get('checkpoint') if isinstance(recorded, dict) else recorded!r}, the "
                              f"run's best is now {best_meta['checkpoint']}: move {refine_dir} away to refine anew")
        return
    atomic_files.write_json_atomic(path, {"checkpoint": best_meta["checkpoint"],
                                          "global_step": best_meta["global_step"], "epoch": best_meta["epoch"]})


# ----------------------------------------------------------------------------- scoring

def score_child(child_dir, code, scored, run_size, scored_size):
    """{"epe", "sample_epe", "checkpoint"} of a child's last checkpoint on `scored`, BN recalibrated
    at the run's size: at `scored_size` (frames resized, EPE at the frame's size) when it is given."""
    arch = supernet.parse_arch(code)
    sizes = [tuple(scored_size)] if scored_size else []
    with scoring.restored_scorer(child_dir, "last", *run_size, sizes, static_arch=arch,
                                 frame_size=tuple(run_size) if scored_size else None) as (sess, scorer, meta):
        result = scoring.score_subnet(sess, scorer, arch, *scored)
    return {"epe": float(result["epe"]), "sample_epe": [float(v) for v in result["sample_epe"]],
            "checkpoint": meta["checkpoint"]}


class ScoreBook:
    """Scores kept in <out>/scores.json under a key each (a refined child's run name, an arch of a
    supernet): one is reused while the checkpoint and the batches are those it was scored with, so a
    rebuilt report is the same and a rerun after any kill scores only what is missing."""

    def __init__(self, out, batches_sha256):
        self.path, self.sha = os.path.join(out, SCORES_NAME), batches_sha256
        found = ckpt.read_json(self.path, "kept scores") if os.path.exists(self.path) else {}
        self.entries = found if isinstance(found, dict) else {}

    def get(self, key, checkpoint):
        """The kept score under `key`, or None where there is none of `checkpoint` on these batches."""
        entry = self.entries.get(key)
        fresh = isinstance(entry, dict) and entry.get("batches_sha256") == self.sha
        return entry if fresh and entry.get("checkpoint") == checkpoint else None

    def put(self, key, score):
        """Keep a score ({..., "checkpoint"}) under `key` (scores.json rewritten atomically)."""
        self.entries[key] = dict(score, batches_sha256=self.sha)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        atomic_files.write_json_atomic(self.path, self.entries)


class Scorer:
    """Scores each child as it finishes (parallel.run_all's on_finished), with a progress line."""

    def __init__(self, book, archs, scored, run_size, scored_size, log):
        self.book, self.archs, self.scored, self.log = book, archs, scored, log
        self.sizes, self.done = (run_size, scored_size), 0

    def __call__(self, child_dir):
        key, last = os.path.basename(child_dir), ckpt.load_meta(child_dir, "last")["checkpoint"]
        score, how = self.book.get(key, last), "kept from before"
        if score is None:
            start = time.time()
            score = score_child(child_dir, self.archs[child_dir], self.scored, *self.sizes)
            self.book.put(key, score)
            how = f"scored in {time.time() - start:.0f} s"
        self.done += 1
        self.log(f"scored {self.done}/{len(self.archs)}: {self.archs[child_dir]} refined EPE {score['epe']:.4f} "
                 f"({how})")
        return score


# ----------------------------------------------------------------------------- the stage

def refine(run_dir, source, settings, children_at_once, train_py, command, log):
    """Refine the source's candidates (settings: config.json's refine): children_at_once (jobs,
    gpus) children at once, each on one core, or each on its own GPU where gpus > 0; then write the
    report and picture into <run>/refine/<source name>/; returns (report, that folder)."""
    best_meta = ckpt.load_meta(run_dir, KIND)
    check_search(source, best_meta)
    cfg = config.run_config(run_dir)
    scored = search_batches(cfg, source)
    out = os.path.join(run_dir, REFINE_DIR, source.name)
    run_size, scored_size = (cfg["input_h"], cfg["input_w"]), source.manifest["scored_size"]
    with ckpt.writer_lock(os.path.join(run_dir, REFINE_DIR), "refinement"):
        codes = [c["arch"] for c in source.candidates]
        refined = train_and_score(run_dir, codes, settings, children_at_once, (scored, run_size, scored_size),
                                  out, source.manifest["batches_sha256"], train_py, source.described, log)
        report = build_report(run_dir, source, [refined[c] for c in codes],
                              [child_dir_of(run_dir, c, settings) for c in codes], dict(settings, top=len(codes)),
                              scored[1], best_meta, command)
        atomic_files.write_json_atomic(os.path.join(out, REPORT_NAME), report)
        plot(os.path.join(out, PICTURE_NAME), report)
    return report, out


def train_and_score(run_dir, codes, settings, at_once, scoring, out, batches_sha256, train_py, described, log,
                    on_scored=None):
    """{code: {"epe", "sample_epe", "checkpoint"}}: each of `codes` refined (train_children; the caller
    holds the refine folder's writer lock) and its last checkpoint scored as it finishes on
    scoring = (batches, run size, scored size or None), then on_scored(code, score); the scores kept in
    <out>/scores.json for these batches (batches_sha256), so a rerun after any kill scores only what is new."""
    os.makedirs(out, exist_ok=True)
    scored, run_size, scored_size = scoring
    archs = {child_dir_of(run_dir, code, settings): code for code in codes}
    score = Scorer(ScoreBook(out, batches_sha256), archs, scored, run_size, scored_size, log)
    refined = {}

    def finished(child_dir):
        refined[archs[child_dir]] = score(child_dir)
        if on_scored:
            on_scored(archs[child_dir], refined[archs[child_dir]])
    train_children(run_dir, codes, settings, at_once, train_py, described, log, finished)
    return refined


def settings_from(given, flag_name):
    """config.json's refine settings with the values `given` ({key: value or None}), checked;
    RefineError naming the value by flag_name(key) otherwise."""
    settings = dict(config.defaults()["refine"])
    settings.update({k: v for k, v in given.items() if v is not None})
    problems = config.refine_problems(settings, flag_name)
    if problems:
        raise RefineError(problems[0])
    return settings


def build_report(run_dir, source, refined, child_dirs, settings, val, best_meta, command):
    """refine_report.json: per candidate (in supernet order) its supernet and refined EPE, each with the
    paired SE against the lowest of its kind, the change and its paired SE, steps, wall time, run."""
    pixels = metrics.sample_pixels(val)
    codes = [c["arch"] for c in source.candidates]
    found = search_parts.read_samples(source.search_dir, [supernet.arch_to_index(supernet.parse_arch(c))
                                                         for c in codes])
    by_supernet = {supernet.format_arch(supernet.index_to_arch(i)): s for i, s in found.items()}
    made = noise_choice.choose([{"epe": s["epe"], "gmacs": c["gmacs"]} for s, c in zip(refined, source.candidates)],
                               [s["sample_epe"] for s in refined], pixels, "lowest_epe", NOISE_Z)
    best = made.lowest
    rows = []
    for i, (candidate, score, child_dir) in enumerate(zip(source.candidates, refined, child_dirs)):
        trained = ckpt.read_json(os.path.join(child_dir, "train_report.json"), "train report")
        size = source.manifest["scored_size"] or source.manifest["input_size"]
        rows.append({"arch": candidate["arch"], "size": size,
                     "gmacs": candidate["gmacs"], "params": candidate["params"], "supernet_epe": candidate["epe"],
                     "supernet_se": paired(by_supernet, candidate["arch"], codes[0], pixels),
                     "refined_epe": score["epe"], "refined_se": made.ses[i], "change": score["epe"] - candidate["epe"],
                     "change_se": None if by_supernet[candidate["arch"]] is None else metrics.paired_se(
                         score["sample_epe"], by_supernet[candidate["arch"]], pixels),
                     "within_noise": made.within[i] and i != best,
                     "steps": trained["global_step"], "wall_time_s": trained["wall_time_s"], "run": child_dir})
    return {"supernet": run_dir, "checkpoint": best_meta["prefix"], "global_step": best_meta["global_step"],
            "source": source.described, "search": source.search_dir, "settings": settings,
            "val_pairs": len(pixels), "batches_sha256": source.manifest["batches_sha256"],
            "best_supernet": codes[0], "best_refined": codes[best], "candidates": rows,
            "training_wall_time_s": sum(r["wall_time_s"] for r in rows), "noise_z": NOISE_Z,
            "command": command}


def paired(samples, arch, other, pixels):
    """metrics.paired_se of two archs' per-pair sums in `samples`, None where either was not kept."""
    a, b = samples.get(arch), samples.get(other)
    return None if a is None or b is None else metrics.paired_se(a, b, pixels)


def report_lines(report):
    """The report as printed: one line per candidate, then the two choices."""
    lines = [f"{'arch':<18} {'GMACs':>6} {'supernet EPE':>13} {'refined EPE':>12} {'SE vs best':>10} {'change':>8} "
             f"{'steps':>6} {'time':>7}"]
    for r in report["candidates"]:
        se = "" if r["refined_se"] is None else f"{r['refined_se']:.4f}"
        mark = " best" if r["arch"] == report["best_refined"] else " within noise" if r["within_noise"] else ""
        lines.append(f"{r['arch']:<18} {r['gmacs']:>6.3f} {r['supernet_epe']:>13.4f} {r['refined_epe']:>12.4f} "
                     f"{se:>10} {r['change']:>+8.4f} {r['steps']:>6} {r['wall_time_s']:>6.0f}s{mark}")
    lines.append(f"lowest refined EPE: {report['best_refined']} (the supernet's pick: {report['best_supernet']}); "
                 f"{sum(r['within_noise'] for r in report['candidates'])} others within {report['noise_z']:g} "
                 f"paired SE of it over {report['val_pairs']} validation pairs")
    return lines


def plot(path, report):
    """refine.png: the candidates in the supernet's order, their supernet EPE (left) and refined EPE
    (right), each +- NOISE_Z paired SE against that panel's best, which is starred. Two panels with
    their own scales: refining shifts every EPE by about as much, so one shared axis would hide the
    differences between candidates that the choice is about."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    rows = sorted(report["candidates"], key=lambda r: r["supernet_epe"])
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(rows) + 4), 5))
    panels = (("supernet", "supernet_epe", "supernet_se", report["best_supernet"]),
              (settings_label(report["settings"]), "refined_epe", "refined_se",
               report["best_refined"]))
    for ax, (what, epe, se, best) in zip(axes, panels):
        ax.errorbar(x, [r[epe] for r in rows], yerr=[NOISE_Z * (r[se] or 0) for r in rows], fmt="o",
                    c="tab:blue", capsize=3, label=f"+-{NOISE_Z:g} paired SE vs the best")
        k = next(i for i, r in enumerate(rows) if r["arch"] == best)
        ax.plot([k], [rows[k][epe]], "*", c="tab:red", ms=14, label=f"best: {best}")
        ax.set_xticks(x, [f"{r['arch']}\n{r['gmacs']:.3f} GMAC" for r in rows], rotation=30, ha="right",
                      fontsize=7)
        ax.set_ylabel(f"EPE, {what} (px)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{os.path.basename(os.path.normpath(report['supernet']))}: {len(rows)} candidates of "
                 f"{os.path.basename(os.path.normpath(report['search']))} in the supernet's order, "
                 f"{report['val_pairs']} validation pairs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
