"""Export one subnet of a trained run: recalibrate its BN statistics (as evaluate.py does), build
the static inference graph of that arch alone, convert it to TFLite FP32 and full-INT8, check that
both still compute the same flow, time them on this CPU and compile the INT8 model for an Arm
Ethos-U NPU with Vela; or build the per-layer NPU latency table that search.py reads.

    python export.py --experiment_name demo --arch 0,0,0,0,0,0,0,0,0
    python export.py --experiment_name demo --arch 2,2,2,2,2,2,2,2,2 --input_h 64 --input_w 96
    python export.py --experiment_name demo --latency_table      # per-layer Ethos-U latency table for search.py

Writes `<run>/export_<code without commas>/`: model_fp32.tflite, model_int8.tflite, vela/ (the compiled
model and Vela's summary and per-layer CSVs) and export_report.json. `--latency_table` writes
`<run>/latency_<accelerator>_<h>x<w>.json` (see edge_tables.load_latency_table and predict_fps).
"""
import os
import sys

import devices

import atomic_files
import ckpt
import compiler
import config
import convert
import edge_tables
import errors
import runs
import supernet
from errors import ConfigError


def export_size(args, cfg):
    """The export input size: the flags, else the run's; ArchError unless multiples of 4."""
    h = cfg["input_h"] if args.input_h is None else args.input_h
    w = cfg["input_w"] if args.input_w is None else args.input_w
    supernet.check_input_size(h, w)
    return h, w


def export_dir(run_dir, arch, size, run_size):
    """<run>/export_<code without commas>, with _<h>x<w> appended when the export size is not the run's."""
    name = "export_" + supernet.format_arch(arch).replace(",", "")
    return os.path.join(run_dir, name if size == run_size else f"{name}_{size[0]}x{size[1]}")


def print_report(report, path):
    """The export's figures, then one Markdown row for the table of docs/export.md."""
    a, c, v, s = report["agreement"], report["cpu"], report["vela"], report["sizes_bytes"]
    h, w = report["input_size"]
    print(f"arch {report['arch']} at {h}x{w}: {report['params']:,} params, "
          f"{report['gmacs']:.3f} GMAC; graph check {'ok' if report['graph_check']['ok'] else 'FAILED'}")
    print(f"  FP32 TFLite vs TensorFlow: max abs diff {a['fp32_max_abs_diff']:.2e} over {a['val_samples']} samples")
    print(f"  EPE  TensorFlow {a['epe_tf']:.4f}  FP32 {a['epe_fp32']:.4f}  INT8 {a['epe_int8']:.4f} "
          f"(INT8 loss {a['int8_epe_loss']:+.4f}); INT8 vs TensorFlow flow: mean abs diff "
          f"{a['int8_mean_abs_diff']:.4f} px, max {a['int8_max_abs_diff']:.3f} px")
    print(f"  CPU ms (1 / {c['threads_all']} threads): "
          f"FP32 {c['fp32_1_thread_ms']:.2f} / {c['fp32_all_threads_ms']:.2f}"
          f"  INT8 {c['int8_1_thread_ms']:.2f} / {c['int8_all_threads_ms']:.2f}")
    cpu_ops = ", ".join(v["cpu_operator_names"]) or "none"
    print(f"  Vela {v['accelerator_config']} {v['system_config']} {v['memory_mode']}: {v['inference_ms']:.2f} ms, "
          f"{v['fps']:.2f} FPS, SRAM {v['sram_used_kib']:.1f} KiB, "
          f"off-chip flash {v['off_chip_flash_used_kib']:.1f} KiB, "
          f"{v['cycles_total']:.0f} cycles, NPU ops {v['npu_operators']}, CPU ops {v['cpu_operators']} ({cpu_ops})")
    print(f"| {report['arch']} | {s['fp32'] / 1024:.0f} / {s['int8'] / 1024:.0f} | {a['fp32_max_abs_diff']:.1e} | "
          f"{a['epe_tf']:.4f} / {a['epe_fp32']:.4f} / {a['epe_int8']:.4f} | {c['fp32_1_thread_ms']:.1f} / "
          f"{c['fp32_all_threads_ms']:.1f} | {c['int8_1_thread_ms']:.1f} / {c['int8_all_threads_ms']:.1f} | "
          f"{v['fps']:.1f} | {v['sram_used_kib']:.0f} | {v['cpu_operators']} |")
    print(f"wrote {path}")


def parse_args(argv):
    """Command-line flags."""
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment_name", help="run under output_dir (default: the newest with the checkpoint)")
    parser.add_argument("--output_dir", default=config.defaults()["output_dir"],
                        help="where runs live (default: config.json's)")
    parser.add_argument("--checkpoint_type", default="best", choices=ckpt.CHECKPOINT_KINDS,
                        help=ckpt.CHECKPOINT_KIND_HELP)
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--arch", help="arch code of the subnet to export, e.g. 0,1,2,0,1,2,0,1,2")
    task.add_argument("--latency_table", action="store_true", help="build the per-layer Ethos-U latency table")
    parser.add_argument("--input_h", type=int, help="export input height (default: the run's; multiple of 4)")
    parser.add_argument("--input_w", type=int, help="export input width (default: the run's; multiple of 4)")
    parser.add_argument("--eval_batches", type=int, help="validation batches for the checks (default: the run's)")
    parser.add_argument("--accelerator_config", default="ethos-u55-64", choices=compiler.ACCELERATORS,
                        help="Vela --accelerator-config")
    parser.add_argument("--system_config", default="Ethos_U55_High_End_Embedded",
                        help=f"Vela system config ({compiler.VELA_INI})")
    parser.add_argument("--memory_mode", default="Shared_Sram", help=f"Vela memory mode ({compiler.VELA_INI})")
    parser.add_argument("--optimise", default="Performance", choices=compiler.OPTIMISE, help="Vela --optimise")
    parser.add_argument("--vela", help="Vela executable (default: beside this Python, else on PATH)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed CPU inferences before timing")
    parser.add_argument("--repeats", type=int, default=20, help="timed CPU inferences (the median is reported)")
    parser.add_argument("--latency_check", type=int, default=20, help="random subnets compiled to check the table")
    parser.add_argument("--latency_seed", type=int, default=0, help="seed of those subnets")
    deploy = config.defaults()["deploy"]
    parser.add_argument("--calibration_samples", type=int, default=deploy["calibration_samples"],
                        help="training crops the INT8 conversion is calibrated on (default: config.json's deploy)")
    parser.add_argument("--recal_at", choices=config.RECAL_AT, default=deploy["recal_at"],
                        help="recalibrate BN at the run's input size or at the export size (default: config.json's)")
    return parser.parse_args(argv)


def check_flags(args):
    """ConfigError naming the first flag out of range."""
    runs.check_scoring_flags(eval_batches=args.eval_batches)
    for flag, smallest in (("warmup", 0), ("repeats", 1), ("latency_check", 1), ("latency_seed", 0),
                           ("calibration_samples", 1)):
        if getattr(args, flag) < smallest:
            raise ConfigError(f"--{flag} {getattr(args, flag)} is out of range (at least {smallest})")


def run(args):
    """Check the inputs first (flags, arch, target, Vela, run, size, checkpoint, output folder), then
    export or build the table."""
    hardware = devices.report()
    check_flags(args)
    arch = supernet.parse_arch(args.arch) if args.arch is not None else None
    target = compiler.flag_target(args.accelerator_config, args.system_config, args.memory_mode, args.optimise)
    tool = compiler.compiler_for(target, args.vela)
    run_dir = runs.run_dir_of(output_dir=args.output_dir, experiment_name=args.experiment_name,
                              checkpoint_type=args.checkpoint_type)
    cfg = runs.scoring_config(run_dir, eval_batches=args.eval_batches)  # the one scoring flag export has
    size = export_size(args, cfg)
    ckpt.load_meta(run_dir, args.checkpoint_type)
    cache = compiler.CompileCache(os.path.join(args.output_dir, cfg["deploy"]["compile_cache"]), tool)
    if args.latency_table:
        table = edge_tables.build_latency_table(run_dir, args.checkpoint_type, cfg, size, target, cache,
                                                (args.latency_check, args.latency_seed), args.calibration_samples)
        path = os.path.join(run_dir, f"latency_{target.accelerator_config}_{size[0]}x{size[1]}.json")
        atomic_files.write_json_atomic(path, dict(table, devices=hardware))
        check = table["check"]
        print(f"predicted vs compiled FPS: median abs error {check['median_abs_error_pct']:.4f}%, "
              f"max {check['max_abs_error_pct']:.4f}%; wrote {path}")
        return table
    standalone = runs.standalone_arch(cfg)
    if standalone and arch != standalone:
        raise ConfigError(f"{run_dir} is a standalone run of {cfg['arch']}: it exports only that arch")
    out_dir = export_dir(run_dir, arch, size, (cfg["input_h"], cfg["input_w"]))
    options = {"calibration_samples": args.calibration_samples, "recal_at_size": args.recal_at == "deploy",
               "timing": (args.warmup, args.repeats), "extra": {"devices": hardware}}
    report = convert.export_subnet(run_dir, args.checkpoint_type, cfg, arch, size, target, out_dir, cache, options)
    print_report(report, os.path.join(out_dir, "export_report.json"))
    return report


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad input."""
    return errors.exit_code(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
