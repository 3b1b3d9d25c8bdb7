"""Score subnets of a trained supernet (or a standalone run): BN recalibration on the run's own
training data, then EPE, px1/px3/px5 and Fl-all of the accumulated full-resolution flow over the
valid pixels of a validation set: the run's FC2 validation split (centre crops), or MPI-Sintel or
KITTI 2015 at full frame. Writes supernet_eval_result_<type><dataset>.json, and with --visualize
the Middlebury-coloured flow pictures.

    python evaluate.py --checkpoint_type last --bn_recal_batches 2 --batch_size 2
    python evaluate.py --experiment_name demo --arch 0,1,2,0,1,2,0,1,2 --arch 2,2,2,2,2,2,2,2,2
    python evaluate.py --experiment_name demo --dataset sintel --base_path /data/Sintel --visualize 2
"""
import os
import sys

import devices

import batches
import atomic_files
import errors
import fair
import flowviz
import runs
import scoring


def parse_args(argv):
    """Command-line flags; unset ones fall back to the run's saved config."""
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    runs.add_run_flags(parser, "score")
    parser.add_argument("--arch", action="append", default=[],
                        help="arch code to score (repeatable; default: the run's eval pool)")
    parser.add_argument("--visualize", type=int, default=0, metavar="N",
                        help="write a picture panel of the first N validation samples for each scored arch")
    parser.add_argument("--save_flow", metavar="DIR", help="write every predicted flow as .flo under DIR/<arch>/")
    args = parser.parse_args(argv)
    if args.visualize < 0:
        parser.error(f"--visualize {args.visualize} is out of range (0 or more samples)")
    return args


def score_checkpoint(args, run_dir, cfg, archs, recal_batches, val_batches, info, on_prediction):
    """Restore the checkpoint into a scorer built for the recalibration size and every scored
    size, and score `archs`; returns (evaluate's result, the checkpoint meta)."""
    h, w = cfg["input_h"], cfg["input_w"]
    with scoring.restored_scorer(run_dir, args.checkpoint_type, h, w, [tuple(size) for size in info["input_sizes"]],
                                 static_arch=runs.standalone_arch(cfg)) as (sess, scorer, meta):
        sizes = ", ".join(f"{a}x{b}" for a, b in info["input_sizes"])
        print(f"scoring {len(archs)} subnets of {meta['prefix']} (epoch {meta['epoch']}, step {meta['global_step']}): "
              f"{len(recal_batches)} recalibration batches at {h}x{w}, "
              f"{info['samples']} validation samples at {sizes}")
        return scoring.evaluate(sess, scorer, archs, recal_batches, val_batches, h, w, log=print,
                                on_prediction=on_prediction), meta


def result_summary(args, run_dir, cfg, meta, result, info, archs, is_pool):
    """The `summary` of a result file: what was scored, on what, and the figures."""
    summary = {"mode": "standalone" if runs.standalone_arch(cfg) else "supernet",
               "run_dir": run_dir, "checkpoint": meta["prefix"], "checkpoint_type": args.checkpoint_type,
               "epoch": meta["epoch"], "global_step": meta["global_step"], "num_archs": len(archs),
               "mean_epe": result["mean_epe"], "std_epe": result["std_epe"],
               "zero_flow_epe": result["zero_flow_epe"],
               "batch_size": cfg["batch_size"], "bn_recal_batches": cfg["bn_recal_batches"],
               "val_samples": info["samples"], "gmacs_input_size": [cfg["input_h"], cfg["input_w"]],
               "archs_are_eval_pool": is_pool, "seconds": result["seconds"],
               **{key: info[key] for key in ("dataset", "pass", "base_path", "data_source", "recal_data_source",
                                             "recal_input_size", "input_sizes", "frame_sizes")}}
    if is_pool:
        coverage = fair.pool_coverage(archs, cfg["input_h"], cfg["input_w"])
        summary.update(coverage_ok=coverage["ok"], coverage_problems=coverage["problems"])
    return summary


def run(args):
    """Score the chosen checkpoint on the chosen dataset and write
    supernet_eval_result_<type><dataset suffix>.json (and pictures, flows); returns the result."""
    hardware = devices.report()
    run_dir = runs.run_dir_of(output_dir=args.output_dir, experiment_name=args.experiment_name,
                              checkpoint_type=args.checkpoint_type)
    cfg = runs.scoring_config(run_dir, batch_size=args.batch_size, bn_recal_batches=args.bn_recal_batches,
                              eval_batches=args.eval_batches)
    archs, is_pool = runs.chosen_archs(args.arch, run_dir, cfg)
    recal_batches, val_batches, info = batches.dataset_batches(cfg, dataset=args.dataset, base_path=args.base_path,
                                                               sintel_pass=args.sintel_pass)
    print(info["reason"])
    picture_dir = os.path.join(run_dir, f"flow_pictures_{args.checkpoint_type}{info['suffix']}")
    writer = flowviz.PredictionWriter(info, args.visualize, picture_dir, args.save_flow)
    result, meta = score_checkpoint(args, run_dir, cfg, archs, recal_batches, val_batches, info,
                                    writer if args.visualize or args.save_flow else None)
    summary = dict(result_summary(args, run_dir, cfg, meta, result, info, archs, is_pool), devices=hardware)
    output = {"summary": summary, "archs": sorted(result["archs"], key=lambda r: r["rank"])}
    path = os.path.join(run_dir, f"supernet_eval_result_{args.checkpoint_type}{info['suffix']}.json")
    atomic_files.write_json_atomic(path, output)
    print(f"mean EPE {summary['mean_epe']:.4f} (std {summary['std_epe']:.4f}) over {len(archs)} subnets; "
          f"zero-flow EPE {summary['zero_flow_epe']:.4f}; wrote {path}")
    if writer.written:
        print(f"wrote {len(writer.written)} pictures to {picture_dir}")
    if args.save_flow:
        print(f"wrote {info['samples']} predicted flows per arch under {args.save_flow}")
    return output


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad input."""
    return errors.exit_code(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
