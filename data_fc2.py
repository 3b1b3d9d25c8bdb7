"""FlyingChairs2 (FC2) data: its list-file and folder layouts, the up-front check of every sample
(and the check that names the file at fault when a training batch fails), and the synthetic
fallback (synthetic.py renders the pairs); fc2_pipeline.py turns the samples into batches. Every
data problem raises DataError with a one-line message that names the file or field. Synthetic data
is used only when asked for or when no dataset is configured at all (`open_data`); a configured but
broken dataset is an error, never a substitute.

    python data_fc2.py --make_synthetic_fc2 DIR --num N [--seed S] [--h H --w W]
    python data_fc2.py --check --base_path DIR
"""
import logging
import os
import re
import sys

import numpy as np

import flowio
import synthetic
from errors import ArgumentParser, DataError

SPLITS = ("train", "val")
DIRNAMES_FILE = "FC2_dirnames.txt"
SPLIT_LIST_FILES = {"train": "FC2_train.txt", "val": "FC2_test.txt"}
FOLDER_ROOT = "FlyingChairs2"
_SUFFIX = {"img0": "-img_0.png", "img1": "-img_1.png", "flow": "-flow_01.flo"}
_SAMPLE_FILE = re.compile(r"^(\d+)(-img_0\.png|-img_1\.png|-flow_01\.flo)$")
_MAX_NAMED_MISSING = 3

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------- FC2 samples: lists, folders

def _check_split(split):
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")


def _read_text_lines(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror})") from None


def _sample_from_img0(img0):
    """(img0, img1, flow) paths of the FC2 sample whose img_0 path is given."""
    stem = img0[: -len(_SUFFIX["img0"])]
    return img0, stem + _SUFFIX["img1"], stem + _SUFFIX["flow"]


def _read_dirnames(base_path):
    """img_0 paths listed in FC2_dirnames.txt, made absolute against base_path where relative."""
    path = os.path.join(base_path, DIRNAMES_FILE)
    lines = _read_text_lines(path, "list file")
    while lines and not lines[-1].strip():
        lines.pop()
    img0_paths = []
    for lineno, line in enumerate(lines, 1):
        entry = line.strip()
        # line numbers are the sample indices, so a blank line would silently shift them all
        if not entry.endswith(_SUFFIX["img0"]):
            raise DataError(f"{path}:{lineno}: expected an img_0 path ending in "
                            f"'{_SUFFIX['img0']}', got {entry!r}")
        img0_paths.append(os.path.normpath(os.path.join(base_path, entry)))
    return img0_paths


def _read_split_indices(base_path, split, n_lines):
    """0-based indices from the split's list file, each checked against FC2_dirnames.txt."""
    path = os.path.join(base_path, SPLIT_LIST_FILES[split])
    indices, seen = [], set()
    for lineno, line in enumerate(_read_text_lines(path, "split list file"), 1):
        if not line.strip():
            continue
        try:
            index = int(line)
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected an integer index, "
                            f"got {line.strip()!r}") from None
        if not 0 <= index < n_lines:
            raise DataError(f"{path}:{lineno}: index {index} out of range: {DIRNAMES_FILE} has "
                            f"{n_lines} lines (valid 0..{n_lines - 1})")
        if index in seen:
            raise DataError(f"{path}:{lineno}: index {index} listed twice")
        seen.add(index)
        indices.append(index)
    return indices


def _scan_split_folder(base_path, split):
    """Samples in FlyingChairs2/<split>/, one per id seen in any of its three file names."""
    folder = os.path.join(base_path, FOLDER_ROOT, split)
    try:
        names = os.listdir(folder)
    except OSError as e:
        raise DataError(f"{folder}: cannot list split folder ({e.strerror})") from None
    # ids come from all three names, so a sample missing its img_0 still shows up as incomplete
    ids = {m.group(1) for m in map(_SAMPLE_FILE.match, names) if m}
    return [_sample_from_img0(os.path.normpath(os.path.join(folder, sid + _SUFFIX["img0"])))
            for sid in sorted(ids, key=lambda s: (int(s), s))]


def detect_layout(base_path):
    """'lists' if base_path holds FC2_dirnames.txt, else 'folders' if it holds FlyingChairs2/ and
    no split list (a split list without FC2_dirnames.txt is a broken lists layout, not folders)."""
    return _detect_layout(base_path)[0]


def _detect_layout(base_path):
    """(layout, why it was chosen) for the auto layout; DataError if base_path has neither."""
    if not os.path.isdir(base_path):
        raise DataError(f"base_path {base_path!r} is not a directory")
    if os.path.isfile(os.path.join(base_path, DIRNAMES_FILE)):
        return "lists", f"{DIRNAMES_FILE} found"
    lists = [name for name in SPLIT_LIST_FILES.values() if os.path.exists(os.path.join(base_path, name))]
    if lists:
        raise DataError(f"{os.path.join(base_path, DIRNAMES_FILE)}: missing, but {lists[0]} is there: the lists "
                        f"layout is incomplete (give data_layout folders to read {FOLDER_ROOT}/ instead)")
    if os.path.isdir(os.path.join(base_path, FOLDER_ROOT)):
        return "folders", f"no {DIRNAMES_FILE}, {FOLDER_ROOT}/ found"
    raise DataError(f"base_path {base_path!r} holds neither {DIRNAMES_FILE} nor {FOLDER_ROOT}/")


def _resolve_layout(base_path, layout):
    if layout == "auto":
        return detect_layout(base_path)
    if layout not in ("lists", "folders"):
        raise DataError(f"data_layout {layout!r} is not one of auto, lists, folders")
    return layout


def list_samples(base_path, split, layout):
    """(img0, img1, flow) path tuples of one split; layout 'lists', 'folders' or 'auto'.

    Lists: FC2_dirnames.txt (img_0 paths relative to base_path, or absolute) indexed by
    FC2_train.txt ('train') or FC2_test.txt ('val'). Folders: FlyingChairs2/<split>/.
    Existence of the files is not checked here (see check_dataset).
    """
    _check_split(split)
    layout = _resolve_layout(base_path, layout)
    if layout == "folders":
        return _scan_split_folder(base_path, split)
    img0_paths = _read_dirnames(base_path)
    indices = _read_split_indices(base_path, split, len(img0_paths))
    return [_sample_from_img0(img0_paths[i]) for i in indices]


def _split_source_name(base_path, split, layout):
    if layout == "lists":
        return os.path.join(base_path, SPLIT_LIST_FILES[split])
    return os.path.join(base_path, FOLDER_ROOT, split)


def check_dataset(base_path, layout, crop_hw=(1, 1)):
    """Count complete samples per split: {"train": n, "val": n}.

    Raises DataError if a split is empty or any sample misses img_0, img_1 or flow_01 (with the
    count of incomplete samples and the first few missing paths), if a sample is in both splits,
    or naming the first file whose header is wrong (check_sample_files: a few dozen bytes of each
    file, so seconds for FC2) or whose sample is smaller than `crop_hw`.
    """
    if not os.path.isdir(base_path):
        raise DataError(f"base_path {base_path!r} is not a directory")
    layout = _resolve_layout(base_path, layout)
    by_split = {}
    for split in SPLITS:
        samples = list_samples(base_path, split, layout)
        if not samples:
            raise DataError(f"split '{split}' under {base_path} has no samples "
                            f"({_split_source_name(base_path, split, layout)})")
        missing = [[p for p in sample if not os.path.isfile(p)] for sample in samples]
        incomplete = sum(1 for m in missing if m)
        if incomplete:
            first = [p for m in missing for p in m][:_MAX_NAMED_MISSING]
            raise DataError(f"{incomplete} of {len(samples)} samples in split '{split}' are "
                            f"incomplete under {base_path}: first missing: {', '.join(first)}")
        for sample in samples:
            check_sample_files(sample, crop_hw)
        by_split[split] = samples
    shared = {os.path.realpath(s[2]) for s in by_split["train"]} & {os.path.realpath(s[2]) for s in by_split["val"]}
    if shared:
        raise DataError(f"{min(shared)}: in both the train and the val split of {base_path} "
                        f"({len(shared)} shared samples): validation must not see training samples")
    return {split: len(samples) for split, samples in by_split.items()}


# ----------------------------------------------------------------------------- a synthetic FC2 tree

def write_synthetic_fc2(root, num, seed=0, h=384, w=512, val_fraction=0.2):
    """Write `num` synthetic samples in the real FC2 layout under `root`; returns split counts.

    Writes FlyingChairs2/{train,val}/NNNNNNN-{img_0.png,img_1.png,flow_01.flo} plus
    FC2_dirnames.txt (img_0 paths relative to root, in id order), FC2_train.txt and
    FC2_test.txt (0-based line indices). Sample id i holds entry i of
    make_synthetic_arrays(num, h, w, seed);
    the val ids are a seeded random subset, so the index lists are not contiguous ranges.
    Refuses to write over an existing FC2 tree. Needs eager execution (PNG encoding).
    """
    if not (isinstance(num, (int, np.integer)) and num >= 2):
        raise DataError(f"num (--num) must be an integer >= 2 (one train and one val sample), "
                        f"got {num!r}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    synthetic.check_image_size(h, w, "synthetic image")
    synthetic.check_seed(seed)
    for name in (FOLDER_ROOT, DIRNAMES_FILE):
        if os.path.exists(os.path.join(root, name)):
            raise DataError(f"{os.path.join(root, name)} already exists; choose an empty directory")
    n_val = min(num - 1, max(1, int(round(num * val_fraction))))
    val_ids = set(np.random.default_rng([seed, 1]).choice(num, n_val, replace=False).tolist())
    for split in SPLITS:
        os.makedirs(os.path.join(root, FOLDER_ROOT, split), exist_ok=True)
    rng = np.random.default_rng(seed)
    dirnames, split_indices = [], {split: [] for split in SPLITS}
    for i in range(num):
        split = "val" if i in val_ids else "train"
        img0, img1, flow = synthetic.make_synthetic_pair(rng, h, w)
        stem = os.path.join(root, FOLDER_ROOT, split, f"{i:07d}")
        flowio.write_png(stem + _SUFFIX["img0"], img0)
        flowio.write_png(stem + _SUFFIX["img1"], img1)
        flowio.write_flo(stem + _SUFFIX["flow"], flow)
        split_indices[split].append(len(dirnames))
        dirnames.append(f"{FOLDER_ROOT}/{split}/{i:07d}{_SUFFIX['img0']}")
    _write_lines(os.path.join(root, DIRNAMES_FILE), dirnames)
    for split in SPLITS:
        _write_lines(os.path.join(root, SPLIT_LIST_FILES[split]), split_indices[split])
    return {split: len(split_indices[split]) for split in SPLITS}


def _write_lines(path, items):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{item}\n" for item in items)


# ----------------------------------------------------------------------------- naming a faulty sample

def check_sample_files(sample, crop_hw=(1, 1)):
    """check_eval_sample, and the sample at least `crop_hw` in size; returns (height, width)."""
    height, width = flowio.check_eval_sample(sample)
    if height < crop_hw[0] or width < crop_hw[1]:
        raise DataError(f"{sample[2]}: {height}x{width} sample is smaller than the {crop_hw[0]}x{crop_hw[1]} crop")
    return height, width


def check_training_sample(sample, crop_hw):
    """Read a training sample whole (load_eval_sample) and check it fits `crop_hw`: a DataError
    naming the file if it cannot be used. What names the culprit when a training batch fails."""
    check_sample_files(sample, crop_hw)
    flowio.load_eval_sample(sample)


def find_fault(samples, crop_hw):
    """The DataError of the first of `samples` that check_training_sample refuses, or None: what
    names the file when a batch of them failed inside TensorFlow or gave a non-finite loss."""
    for sample in samples:
        try:
            check_training_sample(sample, crop_hw)
        except DataError as err:
            return err
    return None


# -------------------------------------------------------------------------------- open_data

_CFG_KEYS = ("base_path", "data_layout", "synthetic", "synthetic_train_size",
             "synthetic_val_size", "input_h", "input_w", "seed")


def _synthetic_data(cfg, reason):
    """Synthetic train and val pairs at the input size, drawn from `synthetic_seed` (-1 or absent:
    the run's `seed`) with the knobs of `synthetic_scene` (absent: the default scenes)."""
    data_seed = cfg.get("synthetic_seed", -1)
    data_seed = cfg["seed"] if data_seed == -1 else data_seed
    synthetic.check_seed(data_seed)
    scene = synthetic.Scene.of(cfg.get("synthetic_scene"))
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(data_seed).spawn(2)]
    data = {}
    for split, key, split_seed in zip(SPLITS, ("synthetic_train_size", "synthetic_val_size"), seeds):
        if not (isinstance(cfg[key], (int, np.integer)) and cfg[key] >= 1):
            raise DataError(f"config {key} must be a positive integer, got {cfg[key]!r}")
        data[split] = synthetic.make_synthetic_arrays(cfg[key], cfg["input_h"], cfg["input_w"], split_seed, scene)
    _log.warning("%s", reason)
    return dict(data_source="synthetic", reason=reason, train=data["train"], val=data["val"],
                counts={split: len(data[split]["flow"]) for split in SPLITS}, layout=None)


def open_data(cfg):
    """Resolve the data a run uses: dict(data_source, reason, train, val, counts, layout).

    Synthetic (announced via logging, layout None) only if cfg["synthetic"] is true or
    cfg["base_path"] is ""; train and val are generated at (input_h, input_w) with two seeds
    spawned from cfg["seed"]. Otherwise base_path must hold a complete FC2 dataset in the
    given layout ("auto", "lists" or "folders"); anything missing raises DataError.
    """
    missing = [key for key in _CFG_KEYS if key not in cfg]
    if missing:
        raise DataError(f"data config lacks key(s): {', '.join(missing)}")
    if cfg["synthetic"]:
        ignored = f" (base_path {cfg['base_path']!r} ignored)" if cfg["base_path"] else ""
        return _synthetic_data(cfg, "synthetic data: --synthetic requested" + ignored)
    base_path = cfg["base_path"]
    if base_path == "":
        return _synthetic_data(cfg, "synthetic data: no base_path configured")
    if not os.path.isdir(base_path):
        raise DataError(f"base_path {base_path!r} is not a directory")
    layout, why = (_detect_layout(base_path) if cfg["data_layout"] == "auto"
                   else (_resolve_layout(base_path, cfg["data_layout"]), "data_layout"))
    counts = check_dataset(base_path, layout, (cfg["input_h"], cfg["input_w"]))
    return dict(data_source="fc2", reason=f"FC2 data from {base_path} ({layout} layout: {why})",
                train=list_samples(base_path, "train", layout),
                val=list_samples(base_path, "val", layout), counts=counts, layout=layout)


# -------------------------------------------------------------------------------------- CLI

def _parse_args(argv):
    parser = ArgumentParser(
        description="FlyingChairs2 data: write a synthetic FC2 tree or check a dataset.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--make_synthetic_fc2", metavar="DIR",
                        help="write synthetic samples in the FC2 layout")
    action.add_argument("--check", action="store_true",
                        help="check every sample (files, .flo and PNG headers, sizes, splits) and count them")
    parser.add_argument("--num", type=int, help="number of synthetic samples (with --make_synthetic_fc2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pairs")
    parser.add_argument("--h", type=int, default=384, help="synthetic image height")
    parser.add_argument("--w", type=int, default=512, help="synthetic image width")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="the share of pairs in the val split")
    parser.add_argument("--base_path", help="dataset root (with --check)")
    args = parser.parse_args(argv)
    if args.make_synthetic_fc2 is not None and args.num is None:
        parser.error("--make_synthetic_fc2 needs --num")
    if args.check and not args.base_path:
        parser.error("--check needs --base_path")
    return args


def _check_both_layouts(base_path):
    """Check every layout present under base_path; returns printable lines."""
    layouts = [layout for layout, marker in (("lists", DIRNAMES_FILE), ("folders", FOLDER_ROOT))
               if os.path.exists(os.path.join(base_path, marker))]
    if not layouts:
        detect_layout(base_path)  # raises the precise error (not a directory / nothing there)
    lines = []
    for layout in layouts:
        counts = check_dataset(base_path, layout)
        lines.append(f"{layout:8s} {base_path}: " + " ".join(f"{s}={counts[s]}" for s in SPLITS))
    return lines


def main(argv=None):
    """CLI entry point; returns the process exit status."""
    args = _parse_args(argv)
    try:
        if args.check:
            print("\n".join(_check_both_layouts(args.base_path)))
        else:
            counts = write_synthetic_fc2(args.make_synthetic_fc2, args.num, seed=args.seed,
                                         h=args.h, w=args.w, val_fraction=args.val_fraction)
            root = args.make_synthetic_fc2
            print(f"wrote {counts['train']} train + {counts['val']} val synthetic samples "
                  f"({args.h}x{args.w}, seed {args.seed}) to {root}: "
                  f"{FOLDER_ROOT}/train, {FOLDER_ROOT}/val, {DIRNAMES_FILE}, "
                  f"{SPLIT_LIST_FILES['train']}, {SPLIT_LIST_FILES['val']}")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
