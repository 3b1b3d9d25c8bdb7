"""How far a supernet can be trusted: does it rank subnets the way training each alone does?

Scores standalone-trained subnets (`train.py --arch CODE` runs) with the supernet and alone, on the
same recalibration and validation batches, and reports Kendall tau-b and Spearman rho with seeded
bootstrap 95% intervals over the archs, top-k overlap, the largest rank shift and the noise floor
of the evaluation (spread over validation batches, rank agreement between two halves of it).

    python rank.py --supernet outputs/demo --standalone outputs/sa_a outputs/sa_b outputs/sa_c
    python rank.py --supernet outputs/demo --standalone_glob 'outputs/rank_demo/standalone_*'
    python rank.py --supernet outputs/demo --train 9 --standalone_dir outputs/rank_demo   # the whole study
    python rank.py --compare A/scores.csv B/scores.csv                                   # two search results
    python rank.py --margin outputs/alone_000000000 outputs/alone_222222222              # two subnets alone
    python rank.py --bench rankbench --train_rows 12 --jobs 2        # the benchmark's next 12 rows (resumes)
    python rank.py --bench rankbench --supernet outputs/bench_supernet  # a supernet against the rows
    python rank.py --bench rankbench --supernet outputs/bench_supernet --refine_steps 100 400 --jobs 2
    python rank.py --bench rankbench --kept_scores rankbench/scores/bench_supernet.json --refine_steps 400
"""
import os
import sys
import time

import devices

import atomic_files
import batches
import bench_chunks
import bench_methods
import ckpt
import data_fc2
import errors
import fair
import parallel
import rank_bench
import rank_plot
import rank_study
import ranking
import refining
import supernet
from errors import RankError

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- CLI

def parse_args(argv):
    """Command-line flags."""
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_study_flags(parser)
    add_bench_flags(parser)
    args = parser.parse_args(argv)
    check_bench_flags(parser, args)
    check_study_flags(parser, args)
    return args


def add_study_flags(parser):
    """The study's flags (a supernet against subnets trained alone) and the two comparisons."""
    parser.add_argument("--supernet", help="the supernet run folder")
    parser.add_argument("--standalone", nargs="+", default=[], metavar="RUN", help="standalone run folders")
    parser.add_argument("--standalone_glob", help="a glob of standalone run folders (quote it)")
    parser.add_argument("--train", type=int, metavar="K", help="choose K archs spread over depth and kernel choices "
                        "and train each alone (train.py --arch) with the supernet's config, unless already trained")
    parser.add_argument("--second_seed", type=int, metavar="M", help="with --train: train M of them again with "
                        "another seed, for the seeds' own agreement (default: a third of K; 0: none)")
    parser.add_argument("--search_choice", action="store_true", help="compare the whole-space search's choice at "
                        "the median GMACs with the subnets of similar cost: with --train it is trained too (two "
                        "seeds), else its runs must be among those given")
    parser.add_argument("--jobs", type=int, default=1, help="with --train, --train_rows or --refine_steps: train "
                        "this many subnets at once, each "
                        "pinned to its share of the CPU cores (on a CPU, two runs on one core each finish sooner "
                        "than one after the other on both), or where there are GPUs each on its own GPU (at most "
                        "one per GPU)")
    parser.add_argument("--standalone_dir", help="where --train puts its runs (default: <supernet>/standalone)")
    parser.add_argument("--out", help="folder for rank_report.json and rank.png (default: --standalone_dir with "
                        "--train, else <supernet>/rank), or for --margin's file (default: B)")
    parser.add_argument("--checkpoint_type", default="best", choices=ckpt.CHECKPOINT_KINDS,
                        help=ckpt.CHECKPOINT_KIND_HELP)
    parser.add_argument("--bn_recal_batches", type=int, help="training batches per BN recalibration when scoring "
                        "(default: the supernet's, or A's with --margin); with few, which batches they are "
                        "moves a subnet's EPE: more give steadier figures")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over the archs")
    parser.add_argument("--seed", type=int, default=0, help="seeds the arch choice and the bootstrap")
    parser.add_argument("--compare", nargs=2, metavar=("A.csv", "B.csv"),
                        help="only compare two search results (scores.csv): tau-b and rho on their shared archs")
    parser.add_argument("--margin", nargs=2, metavar=("A", "B"), help="only compare two standalone runs on A's "
                        "batches: EPE of each, B minus A with its paired standard error, whether each had stopped "
                        "falling; written to B/margin_vs_<A's name>.json (or --out)")


def check_study_flags(parser, args):
    """The study's flags and which command is asked for, against each other: a one-line error."""
    if not (args.compare or args.margin or args.bench) and not args.supernet:
        parser.error("--supernet is required (or --compare A.csv B.csv, --margin A B, or --bench DIR)")
    if sum(bool(v) for v in (args.compare, args.margin, args.supernet or args.bench)) > 1:
        parser.error("give one of --supernet, --compare, --margin")
    given = sum(bool(v) for v in (args.standalone, args.standalone_glob, args.train is not None))
    if args.supernet and not args.bench and given != 1:
        parser.error("give exactly one of --standalone, --standalone_glob, --train")
    if args.train is not None and args.train < ranking.MIN_ARCHS:
        parser.error(f"--train needs at least {ranking.MIN_ARCHS} archs")
    if args.train is not None and args.train > supernet.SPACE.num_archs:
        parser.error(f"--train {args.train} is more than the search space's {supernet.SPACE.num_archs} archs")
    if args.second_seed is not None and not args.train:
        parser.error("--second_seed goes with --train")
    if args.jobs != 1 and not (args.train or args.train_rows or args.refine_steps):
        parser.error("--jobs goes with --train, --train_rows or --refine_steps")
    if args.second_seed is not None and not 0 <= args.second_seed <= args.train:
        parser.error(f"--second_seed must be within 0..{args.train}")
    if args.bootstrap < 1 or args.jobs < 1 or (args.bn_recal_batches is not None and args.bn_recal_batches < 1):
        parser.error("--bootstrap, --jobs and --bn_recal_batches must be >= 1")
    if args.seed < 0:
        parser.error(f"--seed {args.seed} must be >= 0")


def add_bench_flags(parser):
    """The ranking benchmark's flags: --bench, --train_rows, --refine_steps, --kept_scores, --plan_archs,
    --reproduce, --runs_dir."""
    parser.add_argument("--bench", metavar="DIR", help="the ranking benchmark's folder (plan.json, setting.json, "
                        "rows/): alone, how many rows are written; with --train_rows, train the next rows; with "
                        "--reproduce, train one row again; with --supernet, score that supernet against the rows; "
                        "with --kept_scores, report a supernet's kept scores against them")
    parser.add_argument("--train_rows", type=int, metavar="N", help="with --bench: train the next N rows it lacks "
                        "(--jobs at once), each scored into its row as it finishes; resumes after any kill")
    parser.add_argument("--refine_steps", type=int, nargs="+", metavar="N", help="with --bench and --supernet: also "
                        "fine-tune every arch of the rows from the supernet for N steps (refine.py's children, "
                        "config.json's refine epochs; --jobs at once; each N over every arch before the next) and "
                        "score each; the methods table then has the refine stage at each N beside the supernet "
                        "alone and training alone; with --kept_scores, the kept refine settings to report")
    parser.add_argument("--refine_lr_scale", type=float, nargs="+", metavar="S", help="with --refine_steps: each "
                        "child starts at the supernet's learning rate times S (each S at each N; default "
                        "config.json's refine.lr_scale)")
    parser.add_argument("--kept_scores", metavar="FILE", help="with --bench, instead of --supernet: the report and "
                        "methods table from a supernet's kept scores (<bench>/scores/<run>.json) alone, with no "
                        "supernet at hand (--refine_steps: which refine settings; default --out "
                        "outputs/rank_bench/<its name>); every arch with a row must be in them")
    parser.add_argument("--plan_archs", action="store_true", help="with --bench and --supernet: score (and with "
                        "--refine_steps refine) every arch of the plan, not only those with rows, in the plan's "
                        "order (the next rows' first), each kept in the bench's scores as it finishes, so that rows "
                        "landing later need no supernet work")
    parser.add_argument("--reproduce", metavar="ROW", help="with --bench: train row ROW (e.g. 000000000_s42) again "
                        "from its recorded command on one core, score it by the plan's protocol and print its EPE "
                        "against the recorded one and the seed differences the bench measures")
    parser.add_argument("--runs_dir", default=rank_bench.DEFAULT_RUNS_DIR,
                        help="with --bench: where the bench's runs train (their checkpoints are dropped once "
                        "their row is written; a started run's steps left count in the time left)")


def check_bench_flags(parser, args):
    """--bench's flags: alone, with --train_rows N (N >= 1), --reproduce ROW, --supernet or --kept_scores;
    nothing else (its scoring protocol is the plan's)."""
    if (args.train_rows is not None or args.reproduce) and not args.bench:
        parser.error("--train_rows and --reproduce go with --bench")
    if args.refine_steps and not (args.bench and (args.supernet or args.kept_scores)):
        parser.error("--refine_steps goes with --bench and --supernet or --kept_scores")
    if args.refine_lr_scale and not args.refine_steps:
        parser.error("--refine_lr_scale goes with --refine_steps")
    if args.kept_scores and (not args.bench or args.supernet or args.plan_archs or args.jobs != 1):
        parser.error("--kept_scores goes with --bench, instead of --supernet, and not with --plan_archs or --jobs")
    if args.plan_archs and not (args.bench and args.supernet):
        parser.error("--plan_archs goes with --bench and --supernet")
    if args.refine_steps and args.checkpoint_type != refining.KIND:
        parser.error(f"--refine_steps starts every child from the supernet's {refining.KIND} checkpoint: score "
                     f"that one (--checkpoint_type {refining.KIND})")
    if not args.bench:
        return
    if args.standalone or args.standalone_glob or args.train is not None or args.compare or args.margin:
        parser.error("--bench takes --train_rows, --reproduce, --supernet or --kept_scores, not --standalone, "
                     "--train, --compare or --margin")
    if args.bn_recal_batches is not None:
        parser.error("--bench scores by its plan's protocol (plan.json's scoring): not with --bn_recal_batches")
    if args.train_rows is not None and (args.train_rows < 1 or args.supernet or args.kept_scores):
        parser.error("--train_rows must be >= 1 and does not go with --supernet or --kept_scores")
    if args.reproduce and (args.train_rows is not None or args.supernet or args.kept_scores):
        parser.error("--reproduce goes with --bench alone, not with --train_rows, --supernet or --kept_scores")


def bench_status(args):
    """--bench alone: the rows written and the rows to train, with their core-hours; what the kept scores cover."""
    plan = rank_bench.read_plan(args.bench)
    rows = rank_bench.read_rows(args.bench, plan)
    left = rank_bench.missing_rows(plan, rows)
    falling = sorted(name for name, row in rows.items() if row["stopping"]["stopped"] is False)
    hours = sum(bench_chunks.rows_minutes_left(args.bench, left, args.runs_dir).values()) / 60
    print(f"{args.bench}: {len(rows)} of {len(plan['rows'])} rows written"
          + (f" ({len(falling)} still falling: {' '.join(falling)})" if falling else "")
          + f"; {len(left)} to train, about {hours:.1f} core-hours"
          + (f"; next: {' '.join(r['name'] for r in left[:4])}" if left else ""))
    for line in bench_methods.coverage_lines(args.bench, plan, rows):
        print(f"kept scores {line}")


def bench_ranking(args):
    """--bench DIR --supernet RUN: the supernet scores the rows' archs (--plan_archs: every arch of the plan) on
    the rows' own batches; its order against the rows, and the methods table (with --refine_steps, every arch
    refined from it), into rank_report.json, rank.png and methods.png (default <supernet>/rank_bench). With
    --kept_scores FILE instead of --supernet, the same from a supernet's kept scores alone."""
    start, hardware = time.time(), devices.report()
    plan = rank_bench.read_plan(args.bench)
    rows = rank_bench.read_rows(args.bench, plan)
    refine_settings = refine_settings_of(args)
    codes = sorted({r["arch"] for r in rows.values()})
    if args.kept_scores:
        epes, refined, kept, out = read_kept_scores(args, plan, codes, refine_settings)
    else:
        epes, refined, kept, out = scored_by_supernet(args, plan, codes, refine_settings, hardware)
    compute = kept.compute()
    report = rank_bench.bench_report(plan, rows, epes, args.bootstrap, args.seed,
                                     {refining.settings_label(s): by_arch for s, by_arch in refined})
    ranked = [r["arch"] for r in report["archs"]]
    refined = [(settings, {code: by_arch[code] for code in ranked}) for settings, by_arch in refined]
    report.update(supernet=args.supernet, checkpoint_type=args.checkpoint_type, bench=args.bench,
                  kept_scores=kept.path, scoring=plan["scoring"], seconds=time.time() - start, devices=hardware,
                  refined={bench_methods.refine_method(s): by_arch for s, by_arch in refined},
                  methods=bench_methods.methods_table(
                      plan, rows, epes, compute["supernet_steps"], refined, args.bootstrap, args.seed,
                      compute["refine_scale"]))
    write_ranking(out, report, rank_bench.report_lines(report) + bench_methods.methods_lines(report["methods"]))
    rank_plot.plot_methods(report["methods"], os.path.join(out, "methods.png"))
    print(f"and {os.path.join(out, 'methods.png')}")
    return report


def refine_settings_of(args):
    """config.json's refine settings at each --refine_steps N and --refine_lr_scale S, checked; a setting
    asked for twice is refined and reported once."""
    settings = {}
    for steps in args.refine_steps or []:
        for scale in args.refine_lr_scale or [None]:
            one = refining.settings_from({"steps": steps, "lr_scale": scale}, refine_flag)
            settings.setdefault(bench_methods.refine_method(one), one)
    return list(settings.values())


def read_kept_scores(args, plan, codes, refine_settings):
    """({arch: the supernet's EPE}, [(settings, {arch: refined EPE})], KeptScores, the report's folder) of `codes`,
    from --kept_scores alone (checked against the rows' batches)."""
    name = os.path.splitext(os.path.basename(args.kept_scores))[0]
    out = output_folder(args, os.path.join("outputs", bench_methods.REPORTS_DIR, name))
    kept = bench_methods.KeptScores(args.kept_scores, rank_bench.scoring_data(args.bench, plan))
    refined = [(s, kept.kept_epes(bench_methods.refine_method(s), codes)) for s in refine_settings]
    return kept.kept_epes(f"supernet_{args.checkpoint_type}", codes), refined, kept, out


def scored_by_supernet(args, plan, codes, refine_settings, hardware):
    """({arch: the supernet's EPE}, [(settings, {arch: refined EPE})], its KeptScores, the report's folder) of `codes`
    (every arch of the plan with --plan_archs): the compute kept first, then what is not kept already scored
    and refined, on the rows' own batches."""
    supernet_cfg, supernet_report = ranking.read_run(args.supernet)
    rank_bench.check_supernet(args.bench, args.supernet, supernet_cfg)
    out = output_folder(args, os.path.join(args.supernet, bench_methods.REPORTS_DIR))
    scored = rank_bench.scoring_data(args.bench, plan)
    codes = list(dict.fromkeys(r["arch"] for r in plan["rows"])) if args.plan_archs else codes  # the plan's order
    at_once = refining.children_at_once(args.jobs, hardware, len(codes)) if refine_settings else None
    print(f"scoring the bench's {len(codes)} archs with {args.supernet} ({args.checkpoint_type}): "
          f"{len(scored[0])} recalibration batches, {sum(len(flows) for _, flows in scored[1])} validation pairs")
    scale = supernet_cfg["batch_size"] / rank_bench.setting_config(args.bench)["batch_size"]  # steps at the bench's
    with bench_methods.kept_scores(args.bench, args.supernet, scored) as kept:
        kept.keep_compute(supernet_report["global_step"] * fair.paths_per_cycle() * scale, scale)
        epes = bench_methods.supernet_epes(args.supernet, [supernet.parse_arch(c) for c in codes],
                                           args.checkpoint_type, scored, kept, print)
        refined = bench_methods.refined_epes(args.supernet, codes, refine_settings, at_once, scored, out, kept,
                                             os.path.join(HERE, "train.py"), print)
    return epes, refined, kept, out


def refine_flag(key):
    """How a refine setting is named in an error: --refine_steps or --refine_lr_scale, or the config key it comes
    from."""
    return f"--refine_{key}" if key in ("steps", "lr_scale") else f"config.json's refine.{key}"


def bench(args):
    """--bench: its status, its next rows trained, a row trained again, or a supernet scored against it."""
    if args.train_rows or args.reproduce:
        devices.report()  # before any session: quietens TensorFlow's device probing
    if args.train_rows:
        return bench_chunks.train_chunk(args.bench, args.runs_dir, args.train_rows, args.jobs,
                                      os.path.join(HERE, "train.py"))
    if args.reproduce:
        return print_reproduction(bench_chunks.reproduce_row(args.bench, args.reproduce, args.runs_dir,
                                                           os.path.join(HERE, "train.py")))
    return bench_ranking(args) if args.supernet or args.kept_scores else bench_status(args)


def print_reproduction(result):
    """The row trained again against its record, and the seed noise the bench measures."""
    seeds, se = result["seed_differences"], result["paired_se"]
    print(f"row {result['row']} trained again: EPE {result['again_epe']:.6f}, recorded {result['recorded_epe']:.6f}: "
          f"difference {result['difference']:+.6f} (paired SE "
          + (f"{se:.6f}" if se is not None else "none: fewer than 2 pairs") + "), largest per-pair "
          f"difference {result['max_pair_difference']:.6f}")
    print(f"the bench's seed differences (second seed minus first) over {len(seeds)} archs: "
          + (", ".join(f"{a} {d:+.4f}" for a, d in sorted(seeds.items())) if seeds else "none yet"))


def standalone_runs(args, supernet_run, choice):
    """([(run_dir, arch)] to rank, [(run_dir, arch)] trained with a second seed): chosen and trained
    (--train), or given (--standalone, --standalone_glob); checked and ordered by arch code."""
    if not args.train:
        return rank_study.given_runs(supernet_run, args.standalone, args.standalone_glob, choice)
    archs = sorted(ranking.choose_archs(args.train, args.seed))
    print("standalone subnets, spread over depth and kernel choices: "
          + " ".join(supernet.format_arch(a) for a in archs))
    seconds = rank_study.second_seed_plan(args.second_seed, supernet_run[0], archs, choice)
    return rank_study.trained_runs(args.supernet, supernet_run, archs, seconds, args.standalone_dir, args.jobs,
                                   args.gpus, os.path.join(HERE, "train.py"))


def check_jobs(jobs, hardware):
    """--jobs fits this machine: at most one run per core, or per GPU where there are GPUs; RankError otherwise."""
    gpus = len(hardware["gpus"])
    if gpus and jobs > gpus:
        raise RankError(f"--jobs {jobs}: more runs than this machine's {gpus} GPUs (one run per GPU)")
    if not gpus:
        parallel.slot_cores(jobs)


def output_folder(args, default=None):
    """--out, or `default`, or the standalone folder with --train, else <supernet>/rank: checked, not
    created (a refusal later leaves no empty folder); RankError naming it if it cannot be one."""
    out = args.out or default or (args.standalone_dir if args.train else os.path.join(args.supernet, "rank"))
    return check_can_be_folder(out)


def check_can_be_folder(out):
    """`out`, if it is a folder or its nearest existing parent is one this process can write in;
    RankError naming it otherwise."""
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise RankError(f"--out {out}: cannot be a folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RankError(f"--out {out}: cannot be a folder ({existing} cannot be written)")
    return out


def scoring_data(args, cfg):
    """The run's data, opened before any work, with --bn_recal_batches at most its training batches
    (recalibration takes distinct batches of one pass: more would only read the data again and fill
    memory); RankError otherwise."""
    data = data_fc2.open_data(cfg)
    available = data["counts"]["train"] // cfg["batch_size"]
    if args.bn_recal_batches and args.bn_recal_batches > available:
        raise RankError(f"--bn_recal_batches {args.bn_recal_batches}: the run's data has {available} training "
                        f"batches of {cfg['batch_size']}")
    return data


def rank(args):
    """Score every standalone arch with the supernet and alone; write rank_report.json and rank.png."""
    start, hardware = time.time(), devices.report()
    supernet_cfg, supernet_report = ranking.read_run(args.supernet)
    if supernet_cfg.get("arch"):
        raise RankError(f"--supernet {args.supernet} is a standalone run of {supernet_cfg['arch']}, not a supernet")
    args.standalone_dir = args.standalone_dir or os.path.join(args.supernet, "standalone")
    check_jobs(args.jobs, hardware)
    args.gpus = len(hardware["gpus"])  # standalone runs one per GPU where there are GPUs (parallel.run_all)
    data = scoring_data(args, supernet_cfg)
    out = output_folder(args)  # checked before the work
    choice = ranking.search_choice(args.supernet, args.checkpoint_type) if args.search_choice else None
    runs, seconds = standalone_runs(args, (supernet_cfg, supernet_report), choice)
    h, w = supernet_cfg["input_h"], supernet_cfg["input_w"]
    scored = scoring_batches(args, supernet_cfg, data)
    sizes = [len(flows) for _, flows in scored[1]]
    print(f"scoring {len(runs)} subnets with the supernet and alone: {len(scored[0])} recalibration batches, "
          f"{sum(sizes)} validation samples in {len(sizes)} batches")
    histories = {run_dir: ranking.read_history(run_dir, arch) for run_dir, arch in runs + seconds}
    report = rank_study.study_report(args.supernet, runs, seconds, choice,
                                     (args.checkpoint_type, scored, (h, w), args.bootstrap, args.seed), histories,
                                     ranking.scoring_progress(2 * len(runs) + len(seconds)))
    report.update(supernet=args.supernet, supernet_updates_per_option=supernet_report["global_step"],
                  checkpoint_type=args.checkpoint_type, data_source=supernet_report["data_source"],
                  input_size=[h, w], bn_recal_batches=len(scored[0]),
                  seconds=time.time() - start, devices=hardware,
                  training_seconds=ranking.training_seconds([d for d, _ in runs + seconds]))
    report["study_seconds"] = {"supernet": supernet_report.get("wall_time_s"), "search": ranking.search_seconds(
        args.supernet, args.checkpoint_type) if args.search_choice else None,
        "standalone runs": report["training_seconds"], "ranking": report["seconds"]}
    return write_ranking(out, report, ranking.table_lines(report))


def write_ranking(out, report, lines):
    """rank_report.json and rank.png into `out` (made now: the checks are behind), then the lines."""
    os.makedirs(out, exist_ok=True)
    atomic_files.write_json_atomic(os.path.join(out, "rank_report.json"), report)
    rank_plot.plot_ranking(report, os.path.join(out, "rank.png"))
    print("\n".join(lines))
    print(f"wrote {os.path.join(out, 'rank_report.json')} and rank.png")
    return report


def print_comparison(path_a, path_b):
    """--compare: Kendall tau-b and Spearman rho of two scores.csv files on the archs both hold."""
    result = ranking.compare_scores(path_a, path_b)
    print(f"{result['shared_archs']} shared archs ({result['only_a']} only in A, {result['only_b']} only in B): "
          f"Kendall tau-b {result['kendall_tau_b']:.4f}, Spearman rho {result['spearman_rho']:.4f}")


def scoring_batches(args, cfg, data):
    """(recal_batches, val_batches) every subnet is scored on: the run's `data`, recalibrating with
    --bn_recal_batches batches if given."""
    cfg = dict(cfg, bn_recal_batches=args.bn_recal_batches or cfg["bn_recal_batches"])
    return batches.scoring_batches(cfg, data)


def margin(args):
    """--margin A B: the two standalone runs scored on A's batches; prints and writes the margin."""
    start, hardware = time.time(), devices.report()  # before any session: quietens TensorFlow's device probing
    runs = ranking.check_margin_runs(args.margin)  # before any folder or work
    out = args.out or args.margin[1]
    path = os.path.join(out, f"margin_vs_{os.path.basename(os.path.normpath(args.margin[0]))}.json")
    check_can_be_folder(out)
    first_cfg = runs[0][1]
    scored = scoring_batches(args, first_cfg, scoring_data(args, first_cfg))
    result = dict(ranking.standalone_margin(runs, args.checkpoint_type, scored), bn_recal_batches=len(scored[0]),
                  devices=hardware)
    print("\n".join(ranking.margin_lines(result)))
    result["seconds"] = time.time() - start
    os.makedirs(out, exist_ok=True)
    atomic_files.write_json_atomic(path, result)
    print(f"wrote {path}")
    return result


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad input."""
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines are read from a log file while the work runs
    if args.compare:
        return errors.exit_code(print_comparison, *args.compare)
    if args.bench:
        return errors.exit_code(bench, args)
    return errors.exit_code(margin if args.margin else rank, args)


if __name__ == "__main__":
    sys.exit(main())
