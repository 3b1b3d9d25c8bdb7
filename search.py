"""Score many subnets of a trained supernet (all 19,683 by default) exactly, computing every layer
output they share once, then draw the Pareto front of EPE against cost.

A layer's output, and the BN statistics recalibration gives it, depend only on the choices of the
blocks on its path from the input. So the search walks the subnet tree (search_tree.py): the trunk
(E0 .. Up2) once per distinct prefix of the trunk choices, the heads once per distinct (prefix,
head choices on their path), and only the final flow sums and the metrics once per subnet. Every
subnet's EPE equals scoring.score_subnet of that subnet alone on the same batches.

Work is done and written in units (the subnets sharing one trunk prefix), so a killed search
started again with the same command continues where it was; `--shard K/N` scores the K-th of N
disjoint parts and `--merge` combines them.

    python search.py --experiment_name demo                   # the whole space, best checkpoint
    python search.py --sample 200 --seed 1 --max_gmacs 1.0    # a seeded sample, then a budget
    python search.py --shard 2/4 ; python search.py --merge
"""
import math
import os
import sys

import numpy as np
import devices

import atomic_files
import batches
import ckpt
import config
import edge_tables
import errors
import pareto
import runs
import search_parts
import supernet
from errors import ExportError, SearchError


def finish(search_dir, run_dir, args, hardware):
    """Merge the parts into scores.csv, pareto.json and pareto.png; print the front and the budget's choice."""
    manifest, scores, seconds = search_parts.load_parts(search_dir)
    h, w = manifest["scored_size"] or manifest["input_size"]
    table = load_latency_table(args.latency_table, h, w) if args.latency_table else None
    rows = pareto.table_rows(scores, h, w, table)
    pareto.write_scores_csv(os.path.join(search_dir, "scores.csv"), rows)
    costs = [("epe_gmacs", "gmacs", False), ("epe_params", "params", False)] + [("epe_fps", "fps", True)] * bool(table)
    fronts = {key: pareto.pareto_front(rows, cost, maximise) for key, cost, maximise in costs}
    pixels = manifest.get("sample_pixels")
    samples = samples_reader(search_dir)
    fronts = {key: pareto.with_noise(front, samples([r["arch"] for r in front]), pixels)
              for key, front in fronts.items()}
    limits = pareto.budget_limits(max_gmacs=args.max_gmacs, max_params=args.max_params, min_fps=args.min_fps)
    budget = pareto.budget_choice(rows, limits, samples, pixels, args.choice_rule, args.choice_noise_se)
    provenance = {k: manifest[k] for k in manifest if k not in ("shard", "units")}
    provenance.update(run_dir=run_dir, unit_seconds=seconds, latency_table=args.latency_table,
                      parts=manifest["shard"][1], devices=hardware, choice_rule=args.choice_rule,
                      choice_noise_se=args.choice_noise_se)
    atomic_files.write_json_atomic(os.path.join(search_dir, "pareto.json"), {
        "provenance": provenance, "fronts": fronts, "best": rows[0],
        "budget_choice": pareto.budget_report(budget, limits)})
    png = os.path.join(search_dir, "pareto.png")
    pareto.plot_front(png, rows, fronts, {**pareto.marked_subnets(rows, run_dir, manifest["config"]),
                                          **pareto.budget_marks(budget)},
                      f"{os.path.basename(run_dir)} {manifest['checkpoint_type']} checkpoint "
                      f"(step {manifest['global_step']}), "
                      f"{manifest['data_source']} data, {manifest['val_samples']} validation samples",
                      args.choice_noise_se)
    print(f"scored {len(rows):,} subnets ({seconds:.0f} s of unit work); best {pareto.describe(rows[0])}")
    print_fronts(fronts, pareto.budget_lines(budget, limits, fronts))
    print(f"wrote {os.path.join(search_dir, 'scores.csv')}, {os.path.join(search_dir, 'pareto.json')}")
    print(png)
    return rows, fronts


def print_fronts(fronts, budget_lines):
    """The EPE/GMACs front, a subnet a line, then the budget's choice."""
    print(f"EPE/GMACs Pareto front, {len(fronts['epe_gmacs'])} subnets:")
    for row in fronts["epe_gmacs"]:
        print(f"  {pareto.describe(row)}")
    for line in budget_lines:
        print(line)


def samples_reader(search_dir):
    """samples(codes) -> {code: per-sample EPE sums} read from the search's units (see read_samples)."""
    def samples(codes):
        found = search_parts.read_samples(search_dir, [supernet.arch_to_index(supernet.parse_arch(c)) for c in codes])
        return {supernet.format_arch(supernet.index_to_arch(i)): value for i, value in found.items()}
    return samples


def load_latency_table(path, h, w):
    """A per-layer NPU latency table made at this input size, or SearchError naming the file."""
    try:
        table = edge_tables.load_latency_table(path)
    except ExportError as err:
        raise SearchError(f"--latency_table: {err}") from None
    if list(table.get("input_size", [])) != [h, w]:
        raise SearchError(f"--latency_table {path} was made at input size {table.get('input_size')}, "
                          f"the run is {h}x{w}")
    return table


# ----------------------------------------------------------------------------- CLI

def parse_args(argv):
    """Command-line flags; scoring flags left unset fall back to the run's saved config."""
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    runs.add_run_flags(parser, "search")
    parser.add_argument("--space", default="all", choices=("all",), help="score the whole space (the default)")
    parser.add_argument("--archs", nargs="+", metavar="CODE", help="score these arch codes instead")
    parser.add_argument("--archs_file", help="score the codes in this file, one a line")
    parser.add_argument("--sample", type=int, help="score N archs drawn without replacement with --seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--shard", default="1/1", help="score the K-th of N disjoint parts (K/N, 1-based)")
    parser.add_argument("--merge", action="store_true", help="combine finished parts into the outputs, score nothing")
    parser.add_argument("--max_gmacs", type=float, help="budget: print the choice among subnets with at most this "
                                                         "many GMACs (--choice_rule)")
    parser.add_argument("--max_params", type=float, help="budget: at most this many parameters")
    parser.add_argument("--min_fps", type=float, help="budget: at least this NPU FPS (needs --latency_table)")
    deploy = config.defaults()["deploy"]
    parser.add_argument("--choice_rule", choices=config.CHOICE_RULES, default=deploy["choice_rule"],
                        help=f"the budget's choice: {config.DEPLOY_HELP['choice_rule']} (config.json's deploy: "
                             f"{deploy['choice_rule']})")
    parser.add_argument("--choice_noise_se", type=float, default=deploy["choice_noise_se"],
                        help=f"{config.DEPLOY_HELP['choice_noise_se']} (config.json's deploy: "
                             f"{deploy['choice_noise_se']:g})")
    parser.add_argument("--latency_table", help="per-layer NPU latency table from export.py: adds an FPS column")
    parser.add_argument("--progress_every", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--size", type=runs.size_flag, metavar="HxW",
                        help="score at this input size: the run's frames resized to it, EPE at the frame's size")
    parser.add_argument("--recal_at", choices=config.RECAL_AT, default=deploy["recal_at"],
                        help="with --size: recalibrate BN at the run's input size or at --size")
    args = parser.parse_args(argv)
    if args.min_fps is not None and not args.latency_table:
        parser.error("--min_fps needs --latency_table")
    for flag in ("max_gmacs", "max_params", "min_fps", "progress_every", "choice_noise_se"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{flag} {value} must be a positive number")
    return args


def chosen_indices(args):
    """The arch indices the flags --archs, --archs_file, --sample and --seed choose (select_archs)."""
    return search_parts.select_archs(archs=args.archs, archs_file=args.archs_file, sample=args.sample, seed=args.seed)


def dataset_choice(args):
    """The dataset flags (add_dataset_flags) as dataset_batches and result_suffix take them."""
    return dict(dataset=args.dataset, base_path=args.base_path, sintel_pass=args.sintel_pass)


def search_dir_for(run_dir, args, suffix):
    """search_<checkpoint type><dataset suffix>[_<scoring flag><value>][_<arch set>]: the whole space, a
    sample, a list, another dataset and scoring flags that differ from the run's (another recalibration)
    never share a folder."""
    if args.size:
        name = os.path.basename(search_parts.size_search_dir(run_dir, args.checkpoint_type, args.size,
                                                             args.recal_at == "deploy"))
    else:
        name = os.path.basename(search_parts.run_search_dir(run_dir, args.checkpoint_type)) + suffix
    flags = {flag: getattr(args, flag) for flag in runs.SCORING_FLAGS if getattr(args, flag, None) is not None}
    if flags:
        saved = config.run_config(run_dir)
        name += "".join(f"_{flag}{value}" for flag, value in flags.items() if value != saved[flag])
    if args.sample is not None:
        name += f"_sample{args.sample}_seed{args.seed}"
    elif args.archs or args.archs_file:
        name += "_archs" + search_parts.fingerprint([np.array(chosen_indices(args), np.int64)])[:8]
    return os.path.join(run_dir, name)


def scored_inputs(args, cfg):
    """(recal batches, validation batches), info: the run's dataset as the flags choose it, or with
    --size its frames resized to that size. Every validation batch is visited once per trunk node:
    they are held in memory, read once."""
    if args.size:
        base = batches.deployment_base(cfg, 1)
        return search_parts.size_inputs(cfg, base, args.size, args.recal_at == "deploy")
    recal, val, info = batches.dataset_batches(cfg, **dataset_choice(args))
    return (recal, list(val)), info


def run(args):
    """Score (this part of) the search, then write the outputs when all parts are done."""
    hardware = devices.report()
    run_dir = runs.run_dir_of(output_dir=args.output_dir, experiment_name=args.experiment_name,
                              checkpoint_type=args.checkpoint_type)
    cfg = runs.scoring_config(run_dir, batch_size=args.batch_size, bn_recal_batches=args.bn_recal_batches,
                              eval_batches=args.eval_batches)
    if runs.standalone_arch(cfg):
        raise SearchError(f"{run_dir} is a standalone run of {cfg['arch']}: search needs a supernet run")
    if args.size and (args.dataset != "fc2" or args.base_path):
        raise SearchError("--size scores on the run's own frames resized: it takes no --dataset or --base_path")
    if args.size == (cfg["input_h"], cfg["input_w"]):  # not resized: the run's own search, kept in one folder
        args.size = None
    search_dir = search_dir_for(run_dir, args, batches.result_suffix(**dataset_choice(args)))
    if args.latency_table:  # refused now rather than after the scoring
        load_latency_table(args.latency_table, *(args.size or (cfg["input_h"], cfg["input_w"])))
    if args.merge:  # the parts hold every score: no data is read
        return finish(search_dir, run_dir, args, hardware)
    scored, info = scored_inputs(args, cfg)
    print(info["reason"])
    k, n = search_parts.parse_shard(args.shard)
    indices = chosen_indices(args)
    units = search_parts.shard_units(search_parts.make_units(indices), k, n)
    meta = dict(ckpt.load_meta(run_dir, args.checkpoint_type), kind=args.checkpoint_type)
    manifest = search_parts.manifest_for(cfg, meta, info, scored, indices, (k, n), units, args.size)
    if search_parts.done_in_another_split(search_dir, manifest):
        print(f"{search_dir} holds this search already scored, split another way: merging it")
        return finish(search_dir, run_dir, args, hardware)
    search_parts.score_shard(run_dir, args.checkpoint_type, search_dir, manifest, units, scored, args.progress_every)
    if n == 1:
        return finish(search_dir, run_dir, args, hardware)
    print(f"part {args.shard} done; when every part is, combine them: python search.py --merge "
          f"--experiment_name {os.path.basename(run_dir)} --checkpoint_type {args.checkpoint_type}")
    return None


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad input."""
    return errors.exit_code(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
