"""Remedies for the supernet's ranking scored against the ranking benchmark's rows: the refine stage
(each arch of the rows fine-tuned from the supernet's weights, refining's children, scored on the rows'
own batches) and training a shortlist alone, beside the supernet itself, in one methods table:
compute, tau-b and top-3 where a method orders every arch, and the regret of its pick in each cost band.
"""
import contextlib
import glob
import os

import numpy as np

import atomic_files
import ckpt
import config
import rank_bench
import ranking
import refining
import search_parts
import supernet
from errors import RankError

SCORES_DIR = "scores"  # in the bench folder: each supernet's scores of its archs, per method
REPORTS_DIR = "rank_bench"  # in the supernet's run folder: its reports against the bench (default), and their lock
COMPUTE_KEYS = ("supernet_steps", "refine_scale", "checkpoint_sha256")  # a kept file's 'compute'
REFINE_SHORTLISTS = (2, 4, None)  # a cost band's K lowest supernet EPEs refined, or trained alone (None: all)


def scores_path(bench_dir, supernet_dir):
    """Where a supernet's scores are kept: <bench>/scores/<its run folder's name>.json."""
    return os.path.join(bench_dir, SCORES_DIR, os.path.basename(os.path.normpath(supernet_dir)) + ".json")


def read_kept(path):
    """A kept-scores file's content; RankError naming it unless it holds 'methods', each with its
    'checkpoint_sha256' and 'epe', and, once kept, a whole 'compute'."""
    content = ckpt.read_json(path, "kept scores")
    methods = content.get("methods") if isinstance(content, dict) else None
    if not (isinstance(methods, dict) and all(isinstance(m, dict) and isinstance(m.get("epe"), dict)
                                              and "checkpoint_sha256" in m for m in methods.values())):
        raise RankError(f"{path}: must hold a JSON object with 'batches_sha256' and 'methods', each method with "
                        f"'checkpoint_sha256' and 'epe'")
    compute = content.get("compute")
    if compute is not None and not (isinstance(compute, dict) and all(k in compute for k in COMPUTE_KEYS)):
        raise RankError(f"{path}: its 'compute' must hold {', '.join(COMPUTE_KEYS)}")
    return content


def coverage_lines(bench_dir, plan, rows):
    """Per kept-scores file of the bench: each method's archs scored, of the plan's and of those with rows,
    and whether the compute a report needs is kept."""
    planned, with_rows = {r["arch"] for r in plan["rows"]}, {r["arch"] for r in rows.values()}
    lines = []
    for path in sorted(glob.glob(os.path.join(bench_dir, SCORES_DIR, "*.json"))):
        content = read_kept(path)
        lines.append(f"{path}: " + ", ".join(
            f"{name} {len(planned & set(m['epe']))} of {len(planned)} archs "
            f"({len(with_rows & set(m['epe']))} of the {len(with_rows)} with rows)"
            for name, m in sorted(content["methods"].items()))
            + ("; compute kept" if content.get("compute") else "; no compute kept (--supernet RUN once)"))
    return lines


class KeptScores:
    """A supernet's EPE of each bench arch, per method (its own scores, each refine setting's), kept as
    data in the bench's folder beside the rows (scores_path): outputs do not outlast a machine, these do.
    Each method's scores belong to the checkpoint they come from, named by its files' sha256 (the same
    command trains the same bytes), and all to the rows' batches: a rerun, as rows land, after a kill or
    on a supernet trained again, scores and refines only the archs missing. The compute the methods table
    counts is kept too, under the supernet's checkpoints' sha256, so that a report needs no supernet at all
    once every arch with a row is scored (kept_epes)."""

    def __init__(self, path, scored, supernet_dir=None):
        self.path, self.supernet_dir, self.digests = path, supernet_dir, {}
        batches_sha256 = search_parts.batches_fingerprint(*scored)
        self.content = {"batches_sha256": batches_sha256, "methods": {}}
        if os.path.exists(self.path):
            self.content = read_kept(self.path)
        elif supernet_dir is None:
            raise RankError(f"--kept_scores {self.path}: no such file")
        if self.content.get("batches_sha256") != batches_sha256:
            raise RankError(f"{self.path}: scored on other validation or recalibration batches than the rows' "
                            f"(batches_sha256 differs): move it away to score anew")

    def digest(self, kind):
        """sha256 of the supernet's checkpoint `kind` (ckpt.checkpoint_digest), computed once."""
        if kind not in self.digests:
            self.digests[kind] = ckpt.checkpoint_digest(self.supernet_dir, kind)
        return self.digests[kind]

    def checked_epes(self, method, kind):
        """{arch code: EPE} kept for `method`, which comes from the supernet's checkpoint `kind`; RankError if
        they were scored from a checkpoint with other bytes (another supernet under this run's name)."""
        entry = self.content["methods"].setdefault(method, {"checkpoint_sha256": self.digest(kind), "epe": {}})
        if entry["checkpoint_sha256"] != self.digest(kind):
            raise RankError(f"{self.path}: its '{method}' scores come from a checkpoint with other bytes than "
                            f"{self.supernet_dir}'s {kind} (checkpoint_sha256 differs): move it away to score anew")
        return dict(entry["epe"])

    def kept_epes(self, method, codes):
        """{code: EPE} of `codes` kept for `method`, read with no supernet at hand; RankError naming the file
        if the method is not kept, lacks one of `codes`, or comes from other bytes than the compute kept."""
        methods, compute = self.content["methods"], self.compute()
        if method not in methods:
            raise RankError(f"{self.path}: no '{method}' scores kept (it holds {', '.join(sorted(methods))})")
        if methods[method]["checkpoint_sha256"] not in compute["checkpoint_sha256"].values():
            raise RankError(f"{self.path}: its '{method}' scores come from a checkpoint with other bytes than its "
                            f"compute's supernet (checkpoint_sha256 differs)")
        lacking = [code for code in codes if code not in methods[method]["epe"]]
        if lacking:
            raise RankError(f"{self.path}: '{method}' lacks {len(lacking)} of the {len(codes)} archs with rows "
                            f"({lacking[0]} first): score them with --supernet RUN (--plan_archs: every arch)")
        return {code: methods[method]["epe"][code] for code in codes}

    def keep(self, method, code, epe):
        """Add one arch's EPE to `method`'s (after checked_epes(method, ...)); the file rewritten atomically."""
        self.content["methods"][method]["epe"][code] = float(epe)
        self.write()

    def keep_compute(self, supernet_steps, refine_scale):
        """Keep, before any scoring, what the methods table counts as compute: the supernet's subnet training
        steps at the bench's batch and what one refine step counts (the child's batch over the bench's), under
        the sha256 of each of its checkpoints; RankError if they were kept for a supernet with other bytes."""
        digests = {kind: self.digest(kind) for kind in ckpt.CHECKPOINT_KINDS}
        kept = self.content.get("compute")
        if kept and kept["checkpoint_sha256"] != digests:
            raise RankError(f"{self.path}: kept for a supernet whose checkpoints have other bytes than "
                            f"{self.supernet_dir}'s (checkpoint_sha256 differs): move it away to score anew")
        compute = {"supernet_steps": float(supernet_steps), "refine_scale": float(refine_scale),
                   "checkpoint_sha256": digests}
        if kept != compute:
            self.content["compute"] = compute
            self.write()

    def compute(self):
        """The compute keep_compute kept; RankError naming the file if it has none."""
        if not self.content.get("compute"):
            raise RankError(f"{self.path}: no 'compute' kept: score its supernet with --supernet RUN once")
        return self.content["compute"]

    def write(self):
        """The file, rewritten atomically."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        atomic_files.write_json_atomic(self.path, self.content)


@contextlib.contextmanager
def kept_scores(bench_dir, supernet_dir, scored):
    """KeptScores, with <supernet>/REPORTS_DIR locked while they are written: a second scoring of the same
    supernet at the same time would write over the first's scores, so it is refused, naming the holder."""
    with ckpt.writer_lock(os.path.join(supernet_dir, REPORTS_DIR), "the bench's scoring folder"):
        yield KeptScores(scores_path(bench_dir, supernet_dir), scored, supernet_dir)


def supernet_epes(supernet_dir, archs, checkpoint_type, scored, kept, log):
    """{arch code: EPE on the rows' validation pairs} of `archs` held by the supernet's checkpoint, each from
    one recalibration and pass (ranking.scores_of); each kept (KeptScores) as it is scored."""
    cfg, method = config.run_config(supernet_dir), f"supernet_{checkpoint_type}"
    codes = {supernet.format_arch(a): a for a in archs}
    missing = [a for code, a in codes.items() if code not in kept.checked_epes(method, checkpoint_type)]
    log(f"the supernet's scores of {len(codes)} archs: {len(codes) - len(missing)} kept in {kept.path}, "
        f"scoring {len(missing)}")
    sizes, progress = [len(flows) for _, flows in scored[1]], ranking.scoring_progress(len(missing), log)
    for arch, per_batch in ranking.scores_of(supernet_dir, missing, checkpoint_type, scored,
                                             cfg["input_h"], cfg["input_w"]):
        kept.keep(method, supernet.format_arch(arch), ranking.batch_weighted_epe(per_batch, sizes))
        progress(supernet_dir, arch)
    epes = kept.checked_epes(method, checkpoint_type)
    return {code: epes[code] for code in codes}


def refine_method(settings):
    """The refine stage at these settings, as the kept scores and the reports name it: refine_n<steps>_e<epochs>
    (then _lr<scale> for a learning rate other than the supernet's)."""
    return f"refine_{refining.settings_tag(settings)}"


def refine_folder(out, settings):
    """Where the bench's refined children's scores at these refine settings are kept: <out>/<refine_method>."""
    return os.path.join(out, refine_method(settings))


def refine_archs(supernet_dir, codes, settings, at_once, scored, out, train_py, log, on_scored):
    """Each of `codes` fine-tuned from the supernet's best weights for settings' steps (refining's children
    under <supernet>/refine/runs/, shared with refine.py), its last checkpoint scored on the rows' own
    batches, on_scored(code, score) as each is; the scores are also kept in refine_folder(out, settings),
    so a rerun after any kill trains and scores only what is missing."""
    cfg = config.run_config(supernet_dir)
    with ckpt.writer_lock(os.path.join(supernet_dir, refining.REFINE_DIR), "refinement"):
        refining.train_and_score(supernet_dir, codes, settings, at_once,
                                 (scored, (cfg["input_h"], cfg["input_w"]), None), refine_folder(out, settings),
                                 search_parts.batches_fingerprint(*scored), train_py,
                                 f"the bench's {len(codes)} archs", log, on_scored)


def refined_epes(supernet_dir, codes, refine_settings, at_once, scored, out, kept, train_py, log):
    """[(settings, {arch code: refined EPE})]: at each of `refine_settings` in turn, the archs KeptScores lacks
    refined (refine_archs), each kept as it is scored."""
    refined = []
    for settings in refine_settings:
        method = refine_method(settings)
        missing = [code for code in codes if code not in kept.checked_epes(method, refining.KIND)]
        log(f"{refining.settings_label(settings)}: {len(codes) - len(missing)} of {len(codes)} archs kept in "
            f"{kept.path}")
        if missing:
            refine_archs(supernet_dir, missing, settings, at_once, scored, out, train_py, log,
                         lambda code, score: kept.keep(method, code, score["epe"]))
        epes = kept.checked_epes(method, refining.KIND)
        refined.append((settings, {code: epes[code] for code in codes}))
    return refined


def method(name, once, per_pick, ranked, supernet_epe, order=None, bootstrap=0, seed=0, **regret):
    """One line of the methods table: `once` subnet training steps (the supernet's), `per_pick` more
    per shortlisted subnet of a band, tau-b [interval] and top-3 overlap of `order` {arch: EPE} when
    the method orders every arch, and its regret (band_regrets with `regret`)."""
    regrets = rank_bench.band_regrets(ranked, supernet_epe, **regret)
    picks = np.mean([b["shortlist"] for b in regrets["bands"]]) if regrets["bands"] else 0.0
    row = {"method": name, "once_steps": once, "steps_per_pick": float(picks * per_pick),
           "regret_mean": regrets["mean"], "regret_max": regrets["max"], "regret_mean_se": regrets["mean_se"],
           "pick_is_best": regrets["pick_is_best"], "bands": len(regrets["bands"]), "kendall_tau_b": None,
           "tau_ci95": None, "top3_overlap": None}
    if order is not None:
        mine, alone = [order[r["arch"]] for r in ranked], [r["epe"] for r in ranked]
        row.update(kendall_tau_b=ranking.rank_correlations(mine, alone)[0],
                   tau_ci95=ranking.bootstrap_intervals(mine, alone, bootstrap, seed)["tau_ci95"],
                   top3_overlap=ranking.top_k_overlap(mine, alone).get(3))
    return row


def methods_table(plan, rows, supernet_epe, supernet_steps, refined, bootstrap, seed, refine_scale):
    """The supernet, the supernet with its shortlists refined (refined: [(settings, {arch: refined EPE})]),
    and the same shortlists trained alone (the rows), each against the rows: compute in subnet
    training steps at the bench's batch (a refined child's steps count refine_scale each: its batch
    over the bench's), tau-b and top-3 where a method orders every arch, regret of its pick in each
    cost band. Training alone is picked and judged on the same rows, so its regret is only that of
    the shortlist missing the band's best: the reference a remedy is measured against."""
    ranked, _ = rank_bench.ranked_and_second(plan, rows)
    alone = {r["arch"]: r["epe"] for r in ranked}
    row_steps = float(np.mean([r["steps"] for r in ranked]))
    table = [method("supernet", supernet_steps, 0, ranked, supernet_epe, supernet_epe, bootstrap, seed)]
    for settings, epes in refined:
        for k in REFINE_SHORTLISTS:
            shortlist = f"its {k} lowest per band" if k else "every arch"
            table.append(method(f"{shortlist} {refining.settings_label(settings)}", supernet_steps,
                                settings["steps"] * refine_scale, ranked, supernet_epe, None if k else epes,
                                bootstrap, seed, shortlist=k, chosen_by=epes))
    for k in REFINE_SHORTLISTS[:-1]:
        table.append(method(f"its {k} lowest per band trained alone (the rows)", supernet_steps, row_steps, ranked,
                            supernet_epe, shortlist=k, chosen_by=alone))
    return table


def methods_lines(table):
    """The methods table as printed, in Markdown (regret: mean over the bands, in EPE and in paired SEs)."""
    lines = ["| method | supernet steps | steps per pick | tau-b [95%] | top-3 | regret, EPE (paired SEs) | best |",
             "|---|---|---|---|---|---|---|"]
    for m in table:
        tau = "" if m["kendall_tau_b"] is None else \
            f"{m['kendall_tau_b']:.3f} [{m['tau_ci95'][0]:.2f}, {m['tau_ci95'][1]:.2f}]"
        top3 = "" if m["top3_overlap"] is None else f"{m['top3_overlap']:.2f}"
        regret = "" if m["regret_mean"] is None else f"{m['regret_mean']:.4f} ({m['regret_mean_se']:.1f})"
        lines.append(f"| {m['method']} | {m['once_steps']:,.0f} | {m['steps_per_pick']:,.0f} | {tau} | {top3} | "
                     f"{regret} | {m['pick_is_best']}/{m['bands']} |")
    return lines
