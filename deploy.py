"""Find the network a board can run: the (architecture, input size) of a trained supernet that fits
a board target's SRAM, flash and frame rate and is the fastest whose INT8 EPE the validation pairs
cannot tell from the lowest (or, with --choice_rule lowest_epe, has the lowest INT8 EPE), then export
it for the board with what its firmware needs (see deployment.py for the steps).

    python deploy.py --experiment_name demo --target himax-we2
    python deploy.py --experiment_name demo --target board.json --sizes 144x192,128x176
    python deploy.py --experiment_name demo --target ethos-u55-64 --check 24   # tables against full compiles
    python deploy.py --experiment_name demo --target himax-we2 --refine 4      # choose among 4 refined members

Writes <run>/deploy_<target>/ (built aside, then put in place of the last deployment whole):
deploy_report.json, deploy.png, the chosen model (model_fp32.tflite, model_int8.tflite, vela/,
export_report.json), model_vela.cc/.h, reference_input.npy, reference_output.npy and README.txt;
prints the command that retrains the choice at its size. One deployment of a run at a time.
With --refine K the front's K lowest FP32 EPE are fine-tuned from the run's best weights first (as
refine.py does, under <run>/refine/runs/, kept across deployments) and the choice is made among them
on their refined INT8 EPE; the exported model is the chosen child's weights.
"""
import contextlib
import dataclasses
import math
import os
import sys
import time

import devices

import atomic_files
import ckpt
import compiler
import config
import convert
import deployment
import errors
import firmware
import metrics
import noise_choice
import refining
import runs
import supernet
from errors import ConfigError, DeployError

HERE = os.path.dirname(os.path.abspath(__file__))


NPU_FIGURES = ("fps, cycles, sram_kib and flash_kib of each front and INT8 member: its full compile's where its "
               "npu_figures is 'compile', else the latency table's of its size (table_check, when run, measures "
               "those against full compiles); the INT8 members are all compiled")


def parse_args(argv):
    """Command-line flags; settings left unset come from config.json's `deploy`."""
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment_name", help="supernet run under output_dir (default: the newest)")
    parser.add_argument("--output_dir", default=config.defaults()["output_dir"], help="where runs live")
    parser.add_argument("--checkpoint_type", default="best", choices=ckpt.CHECKPOINT_KINDS,
                        help=ckpt.CHECKPOINT_KIND_HELP)
    parser.add_argument("--target", required=True,
                        help=f"a preset ({', '.join(compiler.preset_names())}) or a target JSON file")
    parser.add_argument("--sizes", help="deploy at these input sizes, e.g. 144x192,128x176 (default: multiples of "
                                        "16 at the run's aspect ratio, the largest size_steps that fit)")
    parser.add_argument("--vela", help="Vela executable (default: beside this Python, else on PATH)")
    parser.add_argument("--check", type=int, default=0, metavar="N",
                        help="also compile N seeded random (arch, size) pairs in full and report the tables' errors")
    parser.add_argument("--progress_every", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--refine", type=int, default=0, metavar="K",
                        help="fine-tune the board front's K lowest FP32 EPE from the run's best weights (one child "
                             "per core) and choose among them on their refined INT8 EPE (default 0: off)")
    for key, default in config.defaults()["refine"].items():
        if key != "top":  # --refine K
            parser.add_argument(f"--refine_{key}", type=type(default), help=f"with --refine: "
                                f"{config.REFINE_HELP[key]} (config.json: {default!r})")
    for key, default in config.defaults()["deploy"].items():
        parser.add_argument(f"--{key}", type=type(default), default=None,
                            help=f"{config.DEPLOY_HELP[key]} (config.json: {default!r})")
    return parser.parse_args(argv)


def settings_of(args):
    """config.json's deploy settings with the flags given, checked."""
    settings = dict(config.defaults()["deploy"])
    settings.update({k: getattr(args, k) for k in settings if getattr(args, k) is not None})
    config.check_ranges(dict(config.defaults(), deploy=settings), "flags")
    if not (args.check >= 0 and args.progress_every > 0 and math.isfinite(args.progress_every)):  # NaN fails too
        raise ConfigError("--check must be >= 0 and --progress_every a number > 0")
    return settings


def refine_of(args, hardware):
    """None without --refine; else {"settings": config.json's refine with top K and the flags given,
    "at_once": (children at once, GPUs)}, checked."""
    given = {k: getattr(args, f"refine_{k}") for k in config.defaults()["refine"]
             if k != "top" and getattr(args, f"refine_{k}") is not None}
    if args.refine < 0 or (given and not args.refine):
        raise ConfigError(f"--refine K must be > 0 to refine (0: off), got {args.refine}"
                          + (" with --refine_" + " and --refine_".join(given) if given else ""))
    if not args.refine:
        return None
    settings = dict(config.defaults()["refine"], **given, top=args.refine)
    problems = config.refine_problems(settings, lambda key: "--refine" if key == "top" else f"--refine_{key}")
    if problems:
        raise ConfigError(problems[0])
    return {"settings": settings, "at_once": refining.children_at_once(None, hardware, args.refine)}


def open_deployment(args):
    """The run, target, compile cache and settings, all checked before any work."""
    settings = settings_of(args)
    target = compiler.load_target(args.target)
    tool = compiler.compiler_for(target, args.vela)
    run_dir = runs.run_dir_of(output_dir=args.output_dir, experiment_name=args.experiment_name,
                              checkpoint_type=args.checkpoint_type)
    cfg = config.run_config(run_dir)
    if runs.standalone_arch(cfg):
        raise DeployError(f"{run_dir} is a standalone run of {cfg['arch']}: deploy searches a supernet run")
    meta = ckpt.load_meta(run_dir, args.checkpoint_type)
    cache = compiler.CompileCache(os.path.join(args.output_dir, settings["compile_cache"]), tool)
    return deployment.Deployment(run_dir, args.checkpoint_type, cfg, target, cache, settings, meta)


def describe_deployment(dep):
    """One line: the run, checkpoint, board and compiler a deployment is of."""
    target = dep.target
    return (f"deploying {dep.run_dir} ({dep.kind}, step {dep.meta['global_step']}) on {target.name}: "
            f"{target.accelerator_config} {target.system_config} {target.memory_mode}, optimise {target.optimise}, "
            f"SRAM {target.sram_kib:g} KiB, flash {target.flash_kib:g} KiB"
            + ("" if target.min_fps is None else f", at least {target.min_fps:g} FPS") + f"; {dep.cache.version}")


def search_board(dep, args, refine, log):
    """Sizes, their costs, every subnet scored at each, the board's front and its INT8 scores (of its
    refined members with `refine`: refine_of's)."""
    sizes = deployment.parse_sizes(args.sizes) if args.sizes else deployment.candidate_sizes(dep.run_size)
    chosen, costs = deployment.deployment_sizes(dep, sizes, log)
    scores = {}
    for size in chosen:
        log(f"scoring every subnet at {size[0]}x{size[1]}")
        scores[size] = deployment.score_size(dep, size, args.progress_every)
    rows = deployment.board_rows(dep, scores, costs)
    front = deployment.board_front(dep, rows)
    members = int8_members(dep, front, refine, log)
    log(f"board front: {len(front)} of {len(rows):,} (arch, size) pairs")
    log("the INT8 members compiled in full (the front is drawn again with their compiles):")
    members = deployment.compile_members(dep, members, rows, log)
    front = deployment.board_front(dep, rows)
    pixels = firmware_pixels(dep, members[0]["size"])
    choice, made = deployment.choose(members, pixels, dep.settings)
    refined = refine and deployment.refine_summary(members, pixels, refine["settings"], dep.meta["prefix"])
    return {"sizes": chosen, "costs": costs, "rows": rows, "front": front, "members": members, "choice": choice,
            "noise": made, "refine": refined}


def int8_members(dep, front, refine, log):
    """The front's best int8_top by FP32 EPE scored in INT8; with `refine` its best K, each refined
    first (deployment.refine_members) and converted from its refined weights."""
    top = refine["settings"]["top"] if refine else dep.settings["int8_top"]
    members = [dict(m) for m in sorted(front, key=lambda m: m["epe"])[:top]]
    log(f"INT8 for the front's best {len(members)} by FP32 EPE" + (", refined first" if refine else ""))
    if refine:
        members = deployment.refine_members(dep, members, refine["settings"], refine["at_once"],
                                            os.path.join(HERE, "train.py"), log)
    return deployment.int8_scores(dep, members, log)


def firmware_pixels(dep, size):
    """The validation samples' pixel counts (what the per-sample EPE sums are over)."""
    return metrics.sample_pixels(dep.inputs(tuple(size))["val"])


def export_choice(dep, found, work, log):
    """Export the first member whose full compile fits (the choice, then the others by INT8 EPE) into
    `work`, the deployment folder being built; returns (member, export report)."""
    for member in sorted(found["members"], key=lambda m: (m is not found["choice"], m["epe_int8"])):
        options = {"calibration_samples": dep.settings["calibration_samples"], "recal_at_size": dep.recal_at_size,
                   "base": dep.base(), "folder": dep.folder()}
        own = deployment.weights_of(dep, member)  # a refined member's own weights: never the supernet's
        options["recalibrate"] = own.recalibrator(tuple(member["size"]))
        report = convert.export_subnet(own.run_dir, own.kind, own.cfg, supernet.parse_arch(member["arch"]),
                                       tuple(member["size"]), dep.target, work, dep.cache, options)
        why = deployment.misfit(dep, report["vela"])
        if not why:
            return member, report
        log(f"{member['arch']} at {member['size'][0]}x{member['size'][1]}: its full compile does not fit ({why}); "
            "the next")
    raise DeployError(f"no INT8-scored member of the front fits target {dep.target.name} in a full compile")


def tflm_and_files(dep, member, work, log):
    """The TFLM check of the INT8 model exported into `work` and the firmware files; a missing or
    failing TFLM is one line, and the report says so."""
    size = tuple(member["size"])
    val = dep.inputs(size)["val"]
    model = os.path.join(work, "model_int8.tflite")
    try:
        tflm, reference_in, reference_out = firmware.tflm_check(model, val, dep.settings["tflm_samples"])
        reference = (reference_in, reference_out)
    except DeployError as err:
        log(f"warning: {err}")
        tflm, reference = {"error": str(err)}, None
    return tflm, reference


def run(args):
    """Search the board, then build the deployment folder aside and put it in place whole: the last
    deployment stays as it was until this one is complete. One deployment of a run at a time:
    they share its INT8 conversions and searches."""
    start, hardware = time.time(), devices.report()
    dep = open_deployment(args)
    refine = refine_of(args, hardware)
    with ckpt.writer_lock(os.path.dirname(dep.int8_folder()), "deployment of the run (INT8 folder)"), \
            contextlib.closing(dep):
        print(describe_deployment(dep))
        found = search_board(dep, args, refine, print)
        with convert.building(dep.folder()) as work:
            member, report = write_deployment(dep, found, args, work, (start, hardware))
    print_summary(dep, found, member, report)
    return report


def write_deployment(dep, found, args, work, started):
    """Export the choice into `work`, check it with TFLM, write the firmware files, the report and
    the picture there; returns (member, report). `started`: (start time, devices.report())."""
    member, export = export_choice(dep, found, work, print)
    tflm, reference = tflm_and_files(dep, member, work, print)
    report = build_report(dep, found, member, export, tflm, time.time() - started[0], started[1])
    if args.check:
        extra = (dep.run_size[0] - 4, dep.run_size[1] - 4)  # a size that is not a multiple of 16
        report["table_check"] = deployment.check_costs(dep, found["costs"], args.check, 0, extra)
    compiled = os.path.join(work, os.path.relpath(export["vela"]["compiled_model"], dep.folder()))
    firmware.write_files(work, report, compiled, reference)
    deployment.plot(os.path.join(work, "deploy.png"), found, member, dep)
    atomic_files.write_json_atomic(os.path.join(work, "deploy_report.json"), report)
    return member, report


def build_report(dep, found, member, export, tflm, seconds, hardware):
    """deploy_report.json's content."""
    v = export["vela"]
    return {"arch": member["arch"], "input_size": member["size"], "sram_kib": v["sram_used_kib"],
            "flash_kib": v["off_chip_flash_used_kib"], "fps": v["fps"], "cpu_ops": v["cpu_operators"],
            "epe": member["epe"], "epe_int8": member["epe_int8"], "int8_loss": member["int8_loss"],
            "int8_flow_diff": {"mean": export["agreement"]["int8_mean_abs_diff"],
                               "max": export["agreement"]["int8_max_abs_diff"]},
            "fp32_worse_than_zero_flow": member["fp32_worse_than_zero_flow"], "zero_flow_epe": member["zero_flow_epe"],
            "int8_worse_than_zero_flow": bool(member["epe_int8"] > member["zero_flow_epe"]),
            "calibration_samples": dep.settings["calibration_samples"], "calibration": export["calibration"],
            "tflm": tflm, "target": dataclasses.asdict(dep.target), "vela_version": dep.cache.version,
            "settings": dep.settings, "run_dir": dep.run_dir, "checkpoint": dep.meta["prefix"],
            "exported_checkpoint": export["checkpoint"], "refine": found["refine"],
            "int8_model": os.path.join(dep.folder(), "model_int8.tflite"),
            "sizes": [list(s) for s in found["sizes"]],
            "size_costs": {f"{s[0]}x{s[1]}": c for s, c in found["costs"].items()},
            "npu_figures": NPU_FIGURES, "front": [deployment.public(m) for m in found["front"]],
            "int8_members": [deployment.public(m) for m in found["members"]],
            "choice": noise_choice.summary(found["noise"], deployment.label),
            "neighbours": [deployment.label(m) for m in found["members"] if m["within_noise"] and m is not member],
            "retrain": retrain_command(dep, member), "seconds": seconds, "devices": hardware}


def retrain_command(dep, member):
    """The command that trains the choice alone at its deployment size (the published work's lesson)."""
    h, w = member["size"]
    name = f"{os.path.basename(dep.run_dir)}_{member['arch'].replace(',', '')}_{h}x{w}"
    return (f"python train.py --config {os.path.join(dep.run_dir, 'config.json')} --arch {member['arch']} "
            f"--input_h {h} --input_w {w} --no-fast_mode --experiment_name {name}")


def print_summary(dep, found, member, report):
    """The front, the choice, the lowest INT8 EPE and the members within the noise of it, the TFLM
    check, a warning when the choice is worse than no motion, and the next command."""
    scored = {(m["arch"], tuple(m["size"])): m for m in found["members"]}
    print(f"board front ({len(found['front'])} pairs, fastest first; flash predicted by the size's table, which "
          f"can fall short of a full compile by up to {deployment.FLASH_MISS_PCT:g}%):")
    for m in found["front"]:
        print(f"  {deployment.describe(scored.get((m['arch'], tuple(m['size'])), m))}")
    pairs = len(member["int8_samples"])
    print(f"INT8 on all {pairs} validation pairs, best first:")
    lowest = found["members"][found["noise"].lowest]
    for m in sorted(found["members"], key=lambda m: m["epe_int8"]):
        marks = ["choice"] * (m is found["choice"]) + ["lowest INT8 EPE"] * (m is lowest) + ["within the noise"] * (
            m["within_noise"] and m is not lowest)
        print(f"  {deployment.describe(m)}  {', '.join(marks)}")
    for line in (deployment.refine_lines(found["refine"]) if found.get("refine") else []) + noise_choice.lines(
            found["noise"], deployment.label):
        print(line)
    tflm = report["tflm"]
    if "error" not in tflm:
        print(f"TFLM on the first {tflm['samples']} of those {pairs} pairs: EPE {tflm['epe']:.4f} "
              f"(TFLite on the same {tflm['samples']}: {tflm['tflite_epe_same_samples']:.4f}), "
              f"max {tflm['max_step_diff']} steps from TFLite ({tflm['share_differing']:.1%} differ), "
              f"{tflm['vs_tflite_reference_kernels']['max_step_diff']} from its reference kernels; "
              f"arena {tflm['arena_bytes']} bytes")
    print(f"chosen: {member['arch']} at {member['size'][0]}x{member['size'][1]}: full compile SRAM "
          f"{report['sram_kib']:.1f} KiB, flash {report['flash_kib']:.1f} KiB, {report['fps']:.2f} FPS, "
          f"{report['cpu_ops']} CPU operators")
    if "table_check" in report:
        print(describe_check(report["table_check"]))
    warning = zero_flow_warning(found, member)
    if warning:
        print(warning)
    print(f"wrote {dep.folder()}")
    print(f"retrain it at its size: {report['retrain']}")


def zero_flow_warning(found, member):
    """A warning when the exported member scores worse than predicting no motion on the validation
    frames (in INT8 or FP32), with how many of the INT8 members do too; '' otherwise."""
    zero = member["zero_flow_epe"]
    if member["epe_int8"] <= zero and not member["fp32_worse_than_zero_flow"]:
        return ""
    worse = sum(m["epe_int8"] > m["zero_flow_epe"] for m in found["members"])
    return (f"warning: the choice scores worse than zero flow (predicting no motion: EPE {zero:.4f}): INT8 "
            f"{member['epe_int8']:.4f}, FP32 {member['epe']:.4f}; {worse} of the {len(found['members'])} INT8 "
            "members do too. The supernet has not learnt these frames' flow: train longer or on more data")


def describe_check(check):
    """One line: the tables' largest errors against the full compiles of --check."""
    sizes = sorted({tuple(r["size"]) for r in check["pairs"]}, reverse=True)
    flash_under = max(max(r["flash_kib"] - r["predicted_flash_kib"], 0.0) for r in check["pairs"])
    return (f"tables against {len(check['pairs'])} full compiles at {', '.join(f'{h}x{w}' for h, w in sizes)}: "
            f"SRAM within {check['sram_max_error_kib']:.1f} KiB (under by at most {check['sram_under_kib']:.1f}), "
            f"flash within {check['flash_max_error_kib']:.1f} KiB (under by at most {flash_under:.1f}), "
            f"cycles within {check['cycles_max_error_pct']:.1f}%")


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad input."""
    return errors.exit_code(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
