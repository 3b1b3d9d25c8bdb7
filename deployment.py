"""Fit the board: the best (architecture, input size) a board target can run, judged in INT8.

The steps (deploy.py runs them in order; each keeps its results on disk, so a killed deployment
started again redoes nothing it finished):
1. sizes: given, or multiples of 16 at the run's aspect ratio from the run's input size down;
2. what the NPU costs at each size (edge_tables.size_costs: the table's 9 subnets compiled through
   the compile cache) and the sizes that fit: SRAM within the budget, no operator left to the CPU;
   the largest `size_steps` of them are deployed at;
3. every subnet scored at every such size: the run's validation frames resized to it, the flow
   predicted there brought back to the frame's size and scaled (metrics.to_frame), EPE at the
   frame's size, so EPEs of different sizes compare (search_parts: units that resume and shard);
4. the board's front: the (arch, size) pairs within the flash budget (and min_fps), Pareto-best in
   EPE against NPU frames per second (a pair's full compile where the compile cache holds one, else
   the size's tables);
5. INT8: the front's best `int8_top` by FP32 EPE converted (calibrated on real training crops),
   scored on the same frames with the same metric and compiled in full; the front is drawn again
   with their compiles' figures; the choice (config.json's deploy choice_rule) is the fastest
   member within choice_noise_se paired SE of the lowest INT8 EPE (noise_choice.py), or the lowest.
   With refining (deploy.py --refine K), the front's best K are first fine-tuned from the run's best
   weights (refining.train_children, under <run>/refine/runs/), and every step after reads each
   member's refined weights (weights_of): its INT8 model, its FP32 and INT8 EPE, the choice, the export.
"""
import contextlib
import dataclasses
import hashlib
import io
import os
import time

import numpy as np

import atomic_files
import batches
import ckpt
import config
import convert
import edge_tables
import metrics
import noise_choice
import pareto
import refining
import search_parts
import supernet
from errors import ArchError, DeployError

SIZE_MULTIPLE = 16  # every resize of the network an exact 2x: nothing left to the CPU
# How far the flash a size's table predicts (edge_tables.predict: a line in the parameter count) may fall
# short of a full compile, in % of the compile, as a deployment states it. `deploy.py --check 16` on a 32x48
# run measured shortfalls of at most 0.12% (4.7 KiB of 3,906); --check measures it for any run.
FLASH_MISS_PCT = 1.0


@dataclasses.dataclass
class Deployment:
    """One deployment: a run's checkpoint, a board target and the settings (config.json's deploy)."""

    run_dir: str
    kind: str
    cfg: dict
    target: object  # compiler.Target
    cache: object  # compiler.CompileCache
    settings: dict  # calibration_samples, recal_at, size_steps, int8_top, tflm_samples
    meta: dict  # the checkpoint's meta
    sized: dict = dataclasses.field(default_factory=dict)  # size -> its batches (inputs)
    sessions: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)  # closed by close()
    recalibrators: dict = dataclasses.field(default_factory=dict)  # (run, kind, size) -> recalibrator

    @property
    def run_size(self):
        """The run's input size: the frames every EPE is measured at."""
        return self.cfg["input_h"], self.cfg["input_w"]

    @property
    def recal_at_size(self):
        """Whether BN is recalibrated at the deployment size (else at the run's)."""
        return self.settings["recal_at"] == "deploy"

    def base(self):
        """The run's batches at its own size, read once (batches.deployment_base)."""
        if "base" not in self.sized:
            self.sized["base"] = batches.deployment_base(self.cfg, self.settings["calibration_samples"])
        return self.sized["base"]

    def inputs(self, size):
        """The batches of deploying at `size` (batches.deployment_batches), resized once."""
        if size not in self.sized:
            self.sized[size] = batches.deployment_batches(self.base(), size, self.recal_at_size)
        return self.sized[size]

    def recalibrator(self, size):
        """recalibrate(arch, names) of convert.recalibration_session on the recalibration batches of
        deploying at `size`: one session per checkpoint and recalibration size, opened when first
        asked and kept until close() (building one takes seconds; a deployment asks dozens of times)."""
        recal_size = size if self.recal_at_size else self.run_size
        key = (self.run_dir, self.kind, recal_size)
        if key not in self.recalibrators:
            self.recalibrators[key] = self.sessions.enter_context(convert.recalibration_session(
                self.run_dir, self.kind, self.cfg, self.inputs(size)["recal"], size=recal_size))
        return self.recalibrators[key]

    def close(self):
        """Close the recalibration sessions (of this deployment and of those weights_of made from it)."""
        self.sessions.close()

    def folder(self):
        """<run>/deploy_<target>: the deployment's report, picture and files."""
        return os.path.join(self.run_dir, f"deploy_{self.target.name}")

    def int8_folder(self):
        """Where INT8 conversions are kept: they depend on the checkpoint and settings, not the target."""
        name = (f"int8_{self.kind}_step{self.meta['global_step']}_cal{self.settings['calibration_samples']}"
                f"_recal{self.settings['recal_at']}")
        return os.path.join(self.run_dir, "deploy_int8", name)


# ----------------------------------------------------------------------------- sizes

def candidate_sizes(run_size, lowest=32):
    """Multiples of SIZE_MULTIPLE at the run's aspect ratio (width rounded down), from the largest
    within the run's input size down to `lowest` in height: the frames are never enlarged."""
    h, w = run_size
    sizes = []
    for height in range(h - h % SIZE_MULTIPLE, lowest - 1, -SIZE_MULTIPLE):
        width = int(height * w / h) // SIZE_MULTIPLE * SIZE_MULTIPLE
        if width >= SIZE_MULTIPLE:
            sizes.append((height, width))
    return sizes


def parse_sizes(text):
    """"144x192,128x176" -> [(144, 192), (128, 176)]; DeployError naming the bad size."""
    sizes = []
    for part in text.split(","):
        try:
            sizes.append(supernet.parse_size(part))
        except ArchError as err:
            raise DeployError(f"--sizes: {err}") from None
    if len(set(sizes)) != len(sizes):
        raise DeployError(f"--sizes {text}: a size is given twice")
    return sorted(sizes, reverse=True)


def fits(dep, costs):
    """Why no subnet can be deployed at a size (SRAM over the budget, operators left to the CPU), or ''."""
    if costs["sram_kib"][0] > dep.target.sram_kib:
        return f"SRAM {costs['sram_kib'][0]:.1f} KiB > {dep.target.sram_kib:g} KiB"
    if costs["cpu_operators"]:
        return f"{costs['cpu_operators']} operators on the CPU ({', '.join(costs['cpu_operator_names'])})"
    return ""


def deployment_sizes(dep, sizes, log):
    """(the sizes to deploy at, {size: costs} of every size looked at): the largest `size_steps`
    of `sizes` (largest first) that fit; DeployError naming the smallest SRAM seen if none does."""
    costs, chosen = {}, []
    for size in sizes:
        costs[size] = size_costs(dep, size, log)
        why = fits(dep, costs[size])
        sram = costs[size]["sram_kib"]
        log(f"size {size[0]}x{size[1]}: SRAM {sram[0]:.1f} to {sram[-1]:.1f} KiB, "
            f"{costs[size]['cpu_operators']} CPU operators" + (f": does not fit ({why})" if why else ": fits"))
        if not why:
            chosen.append(size)
            if len(chosen) == dep.settings["size_steps"]:
                break
    if not chosen:
        smallest = min(costs, key=lambda s: costs[s]["sram_kib"][0])
        raise DeployError(f"nothing fits target {dep.target.name}: the smallest SRAM among the sizes tried is "
                          f"{costs[smallest]['sram_kib'][0]:.1f} KiB at {smallest[0]}x{smallest[1]}, the budget is "
                          f"{dep.target.sram_kib:g} KiB" + ("" if costs[smallest]["cpu_operators"] == 0 else
                                                            f" ({fits(dep, costs[smallest])})"))
    return chosen, costs


# ----------------------------------------------------------------------------- INT8 models and compiles

def int8_model(dep, arch, size):
    """The path of the INT8 model of `arch` at `size`: the run's weights with the subnet's BN
    recalibrated, calibrated on the first calibration_samples training crops resized to the size.
    Beside it (<model>.npy) the flow TensorFlow's static graph of the same weights predicts for the
    validation frames at that size, concatenated. Conversions are kept in dep.int8_folder()."""
    folder = dep.int8_folder()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, supernet.format_arch(arch).replace(",", "") + f"_{size[0]}x{size[1]}.tflite")
    if _kept_whole(path):
        return path
    data, recalibrate = dep.inputs(size), dep.recalibrator(size)
    model = convert.static_models(lambda names: recalibrate(arch, names)[1], arch, *size, data["calibration"],
                                  data["val"], with_fp32=False)
    buffer = io.BytesIO()
    np.save(buffer, np.concatenate(model["tf_outputs"]))
    _commit_pair(path, model["int8"], buffer.getvalue())
    return path


def _commit_pair(path, model, flow):
    """Write an INT8 model, its flow (<model>.npy) and last their digest (<model>.sha256), which
    commits the pair; a write that fails (a full disk) removes the pair's files: none is left uncommitted."""
    try:
        atomic_files.write_atomic(path + ".npy", flow)
        atomic_files.write_atomic(path, model)
        atomic_files.write_atomic(path + ".sha256", _digest(model, flow))
    except BaseException:
        for written in (path + ".sha256", path, path + ".npy"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(written)
        raise


def _digest(model, flow):
    """sha256 of an INT8 model's bytes and its flow's (.npy bytes)."""
    return hashlib.sha256(model + flow).hexdigest()


def _kept_whole(path):
    """True when a kept INT8 model and its flow are as written (their digest, written after both,
    matches): a damaged or half-kept pair is converted again, never handed to the interpreter."""
    try:
        with open(path, "rb") as model, open(path + ".npy", "rb") as flow, open(path + ".sha256") as digest:
            return digest.read() == _digest(model.read(), flow.read())
    except OSError:
        return False


def size_costs(dep, size, log=print):
    """edge_tables.size_costs at `size`, its compiles through the cache (the figures of a structure
    compiled before, by this run or another, are not compiled again); a line per compile."""
    work = os.path.join(dep.cache.directory, "work")

    def figures_of(arch):
        start = time.time()
        record = edge_tables.figures(arch, size, dep.target, dep.cache, lambda: int8_model(dep, arch, size), work)
        summary = record["summary"]
        log(f"  {supernet.format_arch(arch)} at {size[0]}x{size[1]}: SRAM {summary['sram_used_kib']:.1f} KiB, "
            f"{summary['fps']:.1f} FPS ({time.time() - start:.1f}s)")
        return record

    return edge_tables.size_costs(size, dep.target, figures_of)


def check_costs(dep, costs, count, seed, extra_size):
    """The size tables against `count` full compiles of seeded random (arch, size) pairs over the
    sizes of `costs` and `extra_size` (one that is not a multiple of 16); edge_tables.check_costs."""
    costs = dict(costs)
    costs.setdefault(extra_size, size_costs(dep, extra_size))
    rng = np.random.default_rng(seed)
    sizes = sorted(costs)
    pairs = [(arch, sizes[i % len(sizes)]) for i, arch in enumerate(supernet.random_archs(count, seed))]
    rng.shuffle(pairs)
    work = os.path.join(dep.cache.directory, "work")
    measured = [edge_tables.figures(arch, size, dep.target, dep.cache, lambda a=arch, s=size: int8_model(dep, a, s),
                                    work) for arch, size in pairs]
    return edge_tables.check_costs(costs, measured)


# ----------------------------------------------------------------------------- scoring at every size

def search_dir(dep, size, manifest):
    """Where the whole-space scores at `size` are kept: at the run's own size the run's own search
    (`search.py`'s), unless that folder holds a search made from other inputs than `manifest`;
    else what `search.py --size` writes."""
    own = search_parts.run_search_dir(dep.run_dir, dep.kind)
    if size == dep.run_size and not search_parts.holds_another_search(own, manifest):
        return own
    return search_parts.size_search_dir(dep.run_dir, dep.kind, size, dep.recal_at_size)


def score_size(dep, size, progress_every):
    """Score every subnet at `size` (frames resized to it, EPE at the frame's size) with the
    search's shared computation, in units that resume, or take a search of them already done (in
    any split); returns {arch index: metrics}."""
    scored, info = search_parts.size_inputs(dep.cfg, dep.base(), size, dep.recal_at_size)
    indices = list(range(supernet.SPACE.num_archs))
    units = search_parts.make_units(indices)
    manifest = search_parts.manifest_for(dep.cfg, dict(dep.meta, kind=dep.kind), info, scored, indices, (1, 1),
                                         units, size)
    directory = search_dir(dep, size, manifest)
    if not search_parts.done_in_another_split(directory, manifest):
        search_parts.score_shard(dep.run_dir, dep.kind, directory, manifest, units, scored, progress_every)
    return search_parts.load_parts(directory)[1]


# ----------------------------------------------------------------------------- the board's front

def board_rows(dep, scores, costs):
    """Every (arch, size) pair scored: arch, size, FP32 EPE, NPU figures (npu_figures) and why it does
    not fit the target ('' if it does)."""
    rows = []
    for size, by_index in scores.items():
        for index, m in by_index.items():
            arch = supernet.index_to_arch(index)
            figures = npu_figures(dep, arch, size, costs[size])
            rows.append({"arch": supernet.format_arch(arch), "size": list(size), "epe": m["epe"],
                         "gmacs": supernet.count_macs(arch, *size) / 1e9, **figures, "misses": misses(dep, figures)})
    return rows


def npu_figures(dep, arch, size, costs):
    """The NPU figures of `arch` at `size`: its full compile's when the compile cache holds one for its
    structure (edge_tables.compiled), else the size's tables' (edge_tables.predict)."""
    entry = dep.cache.structure(supernet.structure(arch, size), dep.target)
    return edge_tables.compiled(entry["summary"]) if entry else edge_tables.predict(costs, arch)


def misses(dep, figures):
    """Why NPU figures do not fit the target: SRAM, flash, min_fps ('' if they do)."""
    why = []
    if figures["sram_kib"] > dep.target.sram_kib:
        why.append(f"SRAM {figures['sram_kib']:.1f} KiB > {dep.target.sram_kib:g} KiB")
    if figures["flash_kib"] > dep.target.flash_kib:
        why.append(f"flash {figures['flash_kib']:.0f} KiB > {dep.target.flash_kib:g} KiB")
    if dep.target.min_fps is not None and figures["fps"] < dep.target.min_fps:
        why.append(f"{figures['fps']:.1f} FPS < {dep.target.min_fps:g}")
    return "; ".join(why)


def compile_members(dep, members, rows, log):
    """Each INT8-scored member (its int8_model) compiled in full through the cache: its NPU figures,
    and those of its row among `rows`, become the compile's; a line per member with the table's FPS."""
    work = os.path.join(dep.cache.directory, "work")
    by_pair = {(r["arch"], tuple(r["size"])): r for r in rows}
    for member in members:
        start, arch, size = time.time(), supernet.parse_arch(member["arch"]), tuple(member["size"])
        record = edge_tables.figures(arch, size, dep.target, dep.cache, lambda path=member["int8_model"]: path, work)
        figures = edge_tables.compiled(record["summary"])
        error = 100 * (member["fps"] / figures["fps"] - 1)
        before = f"the {member['npu_figures']}'s {member['fps']:.2f} ({error:+.2f}%)"
        for row in (member, by_pair[(member["arch"], size)]):
            row.update(figures, misses=misses(dep, figures))
        log(f"  compiled {member['arch']} at {size[0]}x{size[1]}: {figures['fps']:.2f} FPS, {before}, "
            f"{time.time() - start:.1f}s")
    return members


def board_front(dep, rows):
    """The pairs that fit, Pareto-best in EPE against FPS (fastest first); DeployError when none fits."""
    fitting = [r for r in rows if not r["misses"]]
    if not fitting:
        fastest = max(rows, key=lambda r: r["fps"])
        raise DeployError(f"no subnet fits target {dep.target.name}: the fastest runs at {fastest['fps']:.1f} FPS "
                          f"({fastest['arch']} at {fastest['size'][0]}x{fastest['size'][1]}) and misses "
                          f"{fastest['misses']}")
    return pareto.pareto_front(fitting, "fps", maximise=True)


# ----------------------------------------------------------------------------- INT8 on the front

def int8_scores(dep, members, log):
    """Each of `members` (front rows) converted to INT8 at its size and scored on the frames its FP32
    EPE was measured on, with the same metric: epe_int8, int8_loss, int8_flow_diff (mean and max abs
    difference of the INT8 flow from the TensorFlow graph's, px), zero_flow_epe (predicting no motion,
    on the same frames), fp32_worse_than_zero_flow, and the per-sample sums (for the choice's noise)."""
    start = time.time()
    paths = int8_models(dep, members)
    log(f"  {len(members)} INT8 conversions ready, {time.time() - start:.1f}s")
    for member, path in zip(members, paths):
        start, size = time.time(), tuple(member["size"])
        val = dep.inputs(size)["val"]
        outputs = convert.predictions(convert.tflite_predictor(path), val)
        scored = convert.metrics_of(outputs, val)
        if member.get("refined_run"):
            refined_fp32(member, path, val)
        diff = np.abs(np.concatenate(outputs) - np.load(path + ".npy"))
        member.update(epe_int8=scored["epe"], int8_loss=scored["epe"] - member["epe"], int8_model=path,
                      int8_flow_diff={"mean": float(diff.mean()), "max": float(diff.max())},
                      int8_samples=scored["sample_epe"],
                      zero_flow_epe=float(metrics.zero_flow_epe(val)))
        member["fp32_worse_than_zero_flow"] = bool(member["epe"] > member["zero_flow_epe"])
        log(f"  INT8 {member['arch']} at {size[0]}x{size[1]}: EPE FP32 {member['epe']:.4f}, INT8 "
            f"{member['epe_int8']:.4f} ({member['int8_loss']:+.4f}; flow moved {diff.mean():.3f} px on average, "
            f"{diff.max():.2f} at most" + ("; FP32 is worse than zero flow here: a negative loss is no gain"
                                           if member["fp32_worse_than_zero_flow"] and member["int8_loss"] < 0
                                           else "") +
            f"), {time.time() - start:.1f}s")
    return members


def int8_models(dep, members):
    """The INT8 model of each member, converted from its own weights (weights_of)."""
    return [int8_model(weights_of(dep, m), supernet.parse_arch(m["arch"]), tuple(m["size"])) for m in members]


def choose(members, pixels, settings):
    """(the member the deploy settings' choice rule picks, the noise_choice.Choice): of the INT8-scored
    members, the fastest on the NPU within choice_noise_se paired SE of the lowest INT8 EPE, or the
    lowest. Each member gets its paired SE against the lowest INT8 EPE (`epe_int8_se`) and whether
    it cannot be told from it (`within_noise`: the lowest itself too)."""
    made = noise_choice.choose(members, [m["int8_samples"] for m in members], pixels, settings["choice_rule"],
                               settings["choice_noise_se"], epe="epe_int8", cost="fps", maximise=True)
    for member, se, within in zip(members, made.ses, made.within):
        member.update(epe_int8_se=se, within_noise=within)
    return members[made.chosen], made


def label(member):
    """A member's name: its arch at its size."""
    return f"{member['arch']} at {member['size'][0]}x{member['size'][1]}"


# ----------------------------------------------------------------------------- refined members

def refine_members(dep, members, settings, at_once, train_py, log):
    """`members` (front rows), each given `refined_run`: the child of its arch trained alone from the
    run's best weights for settings' steps at the run's size (one child per distinct arch, whatever
    sizes it is deployed at; refining.train_children: finished children are kept, killed ones resume)."""
    if dep.kind != refining.KIND:
        raise DeployError(f"--refine: refined members start from the run's {refining.KIND} checkpoint, so their "
                          f"supernet figures must be its: deploy --checkpoint_type {refining.KIND}, not {dep.kind}")
    codes = list(dict.fromkeys(m["arch"] for m in members))
    with ckpt.writer_lock(os.path.join(dep.run_dir, refining.REFINE_DIR), "refinement"):
        runs = refining.train_children(dep.run_dir, codes, settings, at_once, train_py,
                                       f"the board front on {dep.target.name}", log, lambda child_dir: None)
    steps = {run: ckpt.load_meta(run, "last")["global_step"] for run in runs}
    for member in members:
        run = runs[codes.index(member["arch"])]
        member.update(refined_run=run, refined_steps=steps[run])
    return members


def weights_of(dep, member):
    """The deployment whose checkpoint holds `member`'s weights: its refined child's last checkpoint
    (a standalone run; its conversions kept in its own folder, apart from the supernet's), else the
    run's. Both read the same batches (`sized` is shared) and keep their sessions in one place."""
    run = member.get("refined_run")
    if not run:
        return dep
    return dataclasses.replace(dep, run_dir=run, kind="last", cfg=config.run_config(run),
                               meta=ckpt.load_meta(run, "last"))


def refined_fp32(member, path, val):
    """A refined member's FP32 figures on the deployment's validation batches, from the flow of the
    static graph its INT8 model was converted from (kept beside it): `epe` and `fp32_samples` (per-pair
    EPE sums) become the refined weights', the supernet's EPE is kept as `supernet_epe`."""
    ends = np.cumsum([len(batches.batch_parts(b)[0]) for b in val])[:-1]
    scored = convert.metrics_of(np.split(np.load(path + ".npy"), ends), val)
    member.update(supernet_epe=member["epe"], epe=scored["epe"], fp32_samples=scored["sample_epe"])


def refine_summary(members, pixels, settings, start):
    """What the report says of a refined choice: the refine settings, the checkpoint the children
    started from and, per member (lowest refined FP32 EPE first), its supernet and refined FP32 EPE,
    the refined EPE's paired SE against the lowest refined, the change, the INT8 EPE and its paired
    SE against the lowest INT8 (what the choice compares) and the steps its child trained."""
    members = sorted(members, key=lambda m: (m["epe"], m["arch"], m["size"]))
    rows = [{"member": label(m), "supernet_epe": m["supernet_epe"], "refined_epe": m["epe"],
             "refined_se": None if m is members[0] else metrics.paired_se(m["fp32_samples"],
                                                                          members[0]["fp32_samples"], pixels),
             "change": m["epe"] - m["supernet_epe"], "epe_int8": m["epe_int8"], "epe_int8_se": m["epe_int8_se"],
             "steps": m["refined_steps"], "run": m["refined_run"]}
            for m in members]
    return {"settings": settings, "start": start, "members": rows}


def refine_lines(summary):
    """The refined members as printed: the choice was made among them, on their refined INT8 EPE."""
    s = summary["settings"]
    lines = [f"refined: the front's {len(summary['members'])} lowest FP32 EPE, each {refining.settings_label(s)} "
             f"({s['epochs']} epochs) from {summary['start']}; the choice is among them, on their refined INT8 EPE:"]
    for r in summary["members"]:
        se = "" if r["refined_se"] is None else f", paired SE {r['refined_se']:.4f} vs the lowest refined"
        lines.append(f"  {r['member']}: EPE FP32 supernet {r['supernet_epe']:.4f}, refined {r['refined_epe']:.4f} "
                     f"({r['change']:+.4f}{se}), INT8 {r['epe_int8']:.4f}; {r['steps']} steps")
    return lines


# ----------------------------------------------------------------------------- report and picture

def misfit(dep, compiled):
    """Why a full compile (the compiler's summary) does not fit the target ('' if it does)."""
    min_fps = dep.target.min_fps or 0.0
    checks = [(compiled["sram_used_kib"] > dep.target.sram_kib,
               f"SRAM {compiled['sram_used_kib']:.1f} KiB > {dep.target.sram_kib:g}"),
              (compiled["off_chip_flash_used_kib"] > dep.target.flash_kib,
               f"flash {compiled['off_chip_flash_used_kib']:.1f} KiB > {dep.target.flash_kib:g}"),
              (compiled["cpu_operators"] > 0, f"{compiled['cpu_operators']} CPU operators"),
              (compiled["fps"] < min_fps, f"{compiled['fps']:.1f} FPS < {min_fps:g}")]
    return "; ".join(text for failed, text in checks if failed)


def public(member):
    """A front member as the report stores it (no per-sample arrays, no paths of this machine)."""
    return {k: v for k, v in member.items()
            if k not in ("int8_samples", "int8_model", "samples", "fp32_samples", "refined_run")}


def plot(path, found, member, dep):
    """deploy.png: FP32 EPE against NPU FPS of every (arch, size) scored, one colour per size for
    the pairs that fit (grey: those that do not), the front, its INT8 EPEs with their noise, the
    min_fps line, the choice (the exported `member`) and the lowest INT8 EPE beside it."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    rows, made = found["rows"], found["noise"]
    fig, ax = plt.subplots(figsize=(9, 6))
    misses = [r for r in rows if r["misses"]]
    ax.scatter([r["fps"] for r in misses], [r["epe"] for r in misses], s=3, alpha=0.2, lw=0, color="0.6",
               label=f"{len(misses):,} pairs that do not fit")
    for i, size in enumerate(sorted({tuple(r["size"]) for r in rows}, reverse=True)):
        at = [r for r in rows if tuple(r["size"]) == size and not r["misses"]]
        ax.scatter([r["fps"] for r in at], [r["epe"] for r in at], s=3, alpha=0.4, lw=0, color=f"C{i}",
                   label=f"{size[0]}x{size[1]}: {len(at):,} subnets that fit (FP32)")
    ax.plot([r["fps"] for r in found["front"]], [r["epe"] for r in found["front"]], "-", c="k", lw=1,
            label="board front (FP32)")
    members = found["members"]
    ax.errorbar([m["fps"] for m in members], [m["epe_int8"] for m in members],
                yerr=[made.z * (m["epe_int8_se"] or 0) for m in members], fmt="o", mfc="none", c="tab:red",
                ms=6, capsize=2, label=f"INT8, +-{made.z:g} paired SE vs the lowest INT8 EPE")
    lowest = members[made.lowest]
    ax.plot([member["fps"]], [member["epe_int8"]], "*", c="tab:red", ms=16,
            label=f"choice ({made.rule}, {made.z:g} SE): {label(member)}")
    ax.plot([lowest["fps"]], [lowest["epe_int8"]], "D", c="tab:blue", mfc="none", ms=11, mew=1.5,
            label=f"lowest INT8 EPE: {label(lowest)}")
    if made.covers_front:
        ax.plot([], [], " ", label=f"the noise covers {sum(made.within)} of {len(members)} INT8 members")
    if dep.target.min_fps is not None:
        ax.axvline(dep.target.min_fps, ls="--", c="0.4", label=f"min_fps {dep.target.min_fps:g}")
    ax.set_xlabel("NPU inferences per second (a full compile where there is one: the INT8 members; "
                  "else the latency table of the size)")
    ax.set_ylabel("EPE at the frame's size (px, lower is better)")
    ax.set_title(f"{os.path.basename(dep.run_dir)} on {dep.target.name}: SRAM <= {dep.target.sram_kib:g} KiB, "
                 f"flash <= {dep.target.flash_kib:g} KiB", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe(m):
    """One front member as a line."""
    int8 = (f", INT8 {m['epe_int8']:.4f} ({m['int8_loss']:+.4f}"
            + (f", paired SE {m['epe_int8_se']:.4f} vs the lowest" if m.get("epe_int8_se") else "") + ")"
            if "epe_int8" in m else "")
    refined = f" refined (supernet {m['supernet_epe']:.4f})" if "supernet_epe" in m else ""
    return (f"{m['arch']} at {m['size'][0]}x{m['size'][1]}: EPE FP32 {m['epe']:.4f}{refined}{int8}, "
            f"{m['fps']:.1f} FPS ({m['npu_figures']}), flash {m['flash_kib']:.0f} KiB, {m['gmacs']:.3f} GMAC")
