"""A search's work in durable units: the subnets sharing one trunk prefix are one unit, committed
atomically as it finishes, so a killed search started again continues where it stopped; `--shard
K/N` parts split the units between processes, and merging checks that the parts belong together
and cover the arch set exactly once."""
import glob
import hashlib
import io
import os
import time

import numpy as np

import atomic_files
import batches
import ckpt
import config
import metrics
import search_tree
import supernet
from errors import ArchError, SearchError


def read_archs_file(path):
    """Arch indices from a file of codes, one a line (blank lines and # comments skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise SearchError(f"--archs_file {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise SearchError(f"--archs_file {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    indices = []
    for number, line in enumerate(lines, 1):
        code = line.split("#")[0].strip()
        if code:
            try:
                indices.append(supernet.arch_to_index(supernet.parse_arch(code)))
            except ArchError as err:
                raise SearchError(f"--archs_file {path} line {number}: {err}") from None
    if not indices:
        raise SearchError(f"--archs_file {path} holds no arch code")
    return indices


def select_archs(*, archs, archs_file, sample, seed):
    """Sorted, distinct arch indices: the whole space, or the codes of --archs (a list, or None)
    and --archs_file (a path, or None), or --sample N of them drawn with --seed."""
    if sample is not None and (archs or archs_file):
        raise SearchError("--sample cannot be combined with --archs or --archs_file")
    count = supernet.SPACE.num_archs
    if sample is not None:
        if not 1 <= sample <= count:
            raise SearchError(f"--sample {sample} is outside 1..{count}")
        if seed < 0:
            raise SearchError(f"--seed {seed} must be >= 0")
        return sorted(int(i) for i in np.random.default_rng(seed).choice(count, sample, False))
    if not (archs or archs_file):
        return list(range(count))
    indices = read_archs_file(archs_file) if archs_file else []
    for code in archs or []:
        try:
            indices.append(supernet.arch_to_index(supernet.parse_arch(code)))
        except ArchError as err:
            raise SearchError(f"--archs: {err}") from None
    return sorted(set(indices))


def make_units(indices):
    """Group arch indices by trunk prefix: [(prefix index, [head indices])] in prefix order. A unit
    is the work written at once: the subnets sharing their trunk (at most 243 in the 9-block space)."""
    per_prefix, units = search_tree.heads_per_prefix(), {}
    for index in indices:
        units.setdefault(index // per_prefix, []).append(index % per_prefix)
    return sorted(units.items())


def parse_shard(text):
    """"K/N" -> (K, N) with 1 <= K <= N."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise SearchError(f"--shard {text!r} must be K/N, e.g. 1/4") from None
    if not 1 <= k <= n:
        raise SearchError(f"--shard {text}: K must be in 1..N (shards are numbered 1 to N)")
    return k, n


def shard_units(units, k, n):
    """The K-th of N contiguous parts of `units`, balanced by subnet count (neighbours share most)."""
    total, start, chosen = sum(len(heads) for _, heads in units), 0, []
    for unit in units:
        if start * n // total == k - 1:
            chosen.append(unit)
        start += len(unit[1])
    return chosen


def fingerprint(arrays):
    """sha256 of a sequence of numpy arrays: the identity of a set of batches or archs."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def batches_fingerprint(recal, val):
    """The identity of a search's scoring batches: fingerprint of every array of the recalibration and
    validation batches, in order."""
    return fingerprint([a for b in recal + val for a in b if a is not None])


def part_dir(search_dir, k, n):
    """Folder of the K-th of N parts (one process writes it)."""
    return os.path.join(search_dir, f"part_{k}of{n}")


def open_part(directory, manifest):
    """Create or continue a part: its manifest must equal ours, else SearchError naming it.
    Returns the results of the units already finished there, {prefix: unit}."""
    os.makedirs(os.path.join(directory, "units"), exist_ok=True)
    path = os.path.join(directory, "manifest.json")
    if os.path.exists(path):
        theirs = read_manifest(path)
        diff = sorted(k for k in set(theirs) | set(manifest) if theirs.get(k) != manifest.get(k))
        if diff:
            raise SearchError(f"{directory} was started with another {', '.join(diff)}: move it away to start over")
    else:
        atomic_files.write_json_atomic(path, manifest)
    for stale in glob.glob(os.path.join(directory, "units", "*.tmp*")):  # left by a killed process
        os.remove(stale)
    return read_units(directory)


def other_inputs(theirs, ours):
    """The fields of two part manifests that say they are not one search (all but shard and units)."""
    theirs, ours = comparable(theirs), comparable(ours)
    return sorted(k for k in set(theirs) | set(ours) if k not in ("shard", "units") and theirs.get(k) != ours.get(k))


def comparable(manifest):
    """A part manifest as compared: its config without the keys that never change a score, and with
    the keys added to config.json since it was written at their defaults (which reproduce what the
    run did), so that a new key does not make every search made before it look like another one."""
    if "config" not in manifest:
        return manifest
    defaults = config.defaults()
    cfg = {**{key: defaults[key] for key in config.ADDED_LATER}, **manifest["config"]}
    return dict(manifest, config={k: v for k, v in cfg.items() if k not in NOT_SCORING})


def holds_another_search(search_dir, manifest):
    """True when a part in the search folder was made from other inputs than `manifest` (another
    checkpoint, config, batches, arch set or size): that folder does not hold this search."""
    return any(other_inputs(read_manifest(path), manifest)
               for path in glob.glob(os.path.join(search_dir, "part_*of*", "manifest.json")))


def done_in_another_split(search_dir, manifest):
    """True when the search folder holds this search (same inputs) split another way and finished,
    so it is merged rather than scored again; SearchError when such parts are unfinished or were made
    from other inputs; False when there are none."""
    n = manifest["shard"][1]
    # told apart by folder name: a part of this split may be held, manifest not yet written, by its writer
    folders = [d for d in sorted(glob.glob(os.path.join(search_dir, "part_*of*"))) if not d.endswith(f"of{n}")]
    for d in folders:  # a part its writer holds (or was killed in) before writing its manifest
        if not os.path.exists(os.path.join(d, "manifest.json")):
            m = d.rsplit("of", 1)[1]
            raise SearchError(f"{search_dir} holds this search split in {m} and not finished ({d} has no manifest "
                              f"yet): finish it with --shard K/{m}, or move those folders away")
    others = {d: read_manifest(os.path.join(d, "manifest.json")) for d in folders}
    for d, theirs in others.items():
        diff = other_inputs(theirs, manifest)
        if diff:
            raise SearchError(f"{d} was made with another {', '.join(diff)}: move it away to start over")
    if not others:
        return False
    try:
        load_parts(search_dir)
    except SearchError as error:
        m = next(iter(others.values()))["shard"][1]
        raise SearchError(f"{search_dir} holds this search split in {m} and not finished ({error}): "
                          f"finish it with --shard K/{m}, or move those folders away") from None
    return True


def read_units(directory):
    """The finished units of a part: {prefix index: {"rows": {head: metrics}, "seconds"}}, each
    checked (SearchError naming the file and field)."""
    units = {}
    for path in sorted(glob.glob(os.path.join(directory, "units", "unit_*.json"))):
        unit = ckpt.read_json(path, "search unit")
        units[_checked_unit(unit, path)] = unit
    return units


def _checked_unit(unit, path):
    """The prefix of a unit read from `path`, after checking every field; SearchError otherwise."""
    if not isinstance(unit, dict):
        raise SearchError(f"search unit {path}: must hold a JSON object")
    for field, kind in (("prefix", int), ("rows", dict), ("seconds", (int, float))):
        if not isinstance(unit.get(field), kind) or isinstance(unit.get(field), bool):
            raise SearchError(f"search unit {path}: field '{field}' missing or not a JSON {kind_name(kind)}")
    for head, row in unit["rows"].items():
        if (not (head.isascii() and head.isdigit()) or int(head) >= search_tree.heads_per_prefix()
                or not isinstance(row, dict)):  # isdigit alone takes '²', which int() refuses
            raise SearchError(f"search unit {path}: row {head!r} is not a subnet's metrics")
        for key in metrics.NAMES:
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise SearchError(f"search unit {path}: row {head}: '{key}' is {value!r}, not a finite number")
    return unit["prefix"]


def kind_name(kind):
    """'integer', 'object' or 'number' for the Python type(s) a JSON field must have."""
    return {int: "integer", dict: "object", list: "array"}.get(kind, "number")


def read_manifest(path):
    """A part's manifest, its fields checked (SearchError naming the file and field)."""
    manifest = ckpt.read_json(path, "search part manifest")
    if not isinstance(manifest, dict):
        raise SearchError(f"search part manifest {path}: must hold a JSON object")
    shard, units = manifest.get("shard"), manifest.get("units")
    if not (isinstance(shard, list) and len(shard) == 2 and all(type(v) is int for v in shard)
            and 1 <= shard[0] <= shard[1]):
        raise SearchError(f"search part manifest {path}: field 'shard' must be [K, N] with 1 <= K <= N")
    if not (isinstance(units, list) and all(type(v) is int for v in units)
            and type(manifest.get("num_archs")) is int):
        raise SearchError(f"search part manifest {path}: fields 'units' and 'num_archs' must be integers")
    if manifest.get("space_version") != supernet.SPACE.version:
        raise SearchError(f"search part manifest {path} was made with search space {manifest.get('space_version')}, "
                          f"this code has {supernet.SPACE.version}")
    return manifest


def write_unit(directory, prefix, rows, seconds):
    """Commit one finished unit: first its subnets' per-sample EPE sums (unit_NN.npy, one row per
    head in ascending order), then its metrics (unit_NN.json), each atomically; the JSON commits
    the unit, so a killed search never leaves half a unit."""
    path = os.path.join(directory, "units", f"unit_{prefix:02d}")
    heads = sorted(rows)
    buffer = io.BytesIO()
    np.save(buffer, np.stack([rows[h]["sample_epe"] for h in heads]).astype(np.float32))
    atomic_files.write_atomic(path + ".npy", buffer.getvalue())
    metrics_only = {str(h): {k: v for k, v in rows[h].items() if k != "sample_epe"} for h in heads}
    atomic_files.write_json_atomic(path + ".json", {"prefix": prefix, "rows": metrics_only, "seconds": seconds})


def read_samples(search_dir, indices):
    """{arch index: its per-sample EPE sums} of `indices` from the units of a finished search (None
    for a unit written without them)."""
    per_prefix, found = search_tree.heads_per_prefix(), {}
    for prefix in sorted({i // per_prefix for i in indices}):
        paths = glob.glob(os.path.join(search_dir, "part_*of*", "units", f"unit_{prefix:02d}.npy"))
        unit = ckpt.read_json(paths[0][:-4] + ".json", "search unit") if paths else None
        table = _unit_table(paths[0], len(unit["rows"])) if paths else None
        heads = sorted(int(h) for h in unit["rows"]) if unit else []
        for index in indices:
            if index // per_prefix == prefix:
                found[index] = table[heads.index(index % per_prefix)] if unit else None
    return found


def _unit_table(path, rows):
    """A unit's per-sample EPE sums ([rows, samples] floats), or SearchError naming the file."""
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise SearchError(f"search unit {path}: not a saved array: {err}") from None
    if table.ndim != 2 or table.shape[0] != rows or not np.issubdtype(table.dtype, np.floating):
        raise SearchError(f"search unit {path}: must hold {rows} rows of per-sample EPEs, has shape {table.shape}")
    return table


class Progress:
    """A progress line at most every `every` seconds: units, subnets, rate and time left."""

    def __init__(self, units_total, subnets_total, subnets_done, every):
        self.units_total, self.subnets_total, self.every = units_total, subnets_total, every
        self.start_done, self.start, self.last = subnets_done, time.time(), 0.0

    def report(self, units_done, subnets_done, force=False):
        """Print the line if `every` seconds passed since the last one (or `force`)."""
        now = time.time()
        if not force and now - self.last < self.every:
            return
        self.last = now
        rate = (subnets_done - self.start_done) / max(now - self.start, 1e-9)
        left = (self.subnets_total - subnets_done) / rate if rate > 0 else float("nan")
        print(f"search: units {units_done}/{self.units_total}, subnets {subnets_done}/{self.subnets_total}, "
              f"{rate:.1f} subnets/s, time left {_duration(left)}", flush=True)


def _duration(seconds):
    if not np.isfinite(seconds):
        return "unknown"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def score_part(scorer, units, done, directory, progress_every):
    """Score every unit of a part not yet done, committing each as it finishes."""
    subnets_done = sum(len(u["rows"]) for u in done.values())
    units_done = len(done)
    progress = Progress(len(units), sum(len(h) for _, h in units), subnets_done, progress_every)
    scorer.tick = lambda: progress.report(units_done, subnets_done)
    for prefix, heads in units:
        if prefix in done:
            continue
        start = time.time()
        rows = scorer.score_prefix(search_tree.prefix_choices(prefix), heads)
        write_unit(directory, prefix, rows, time.time() - start)
        units_done, subnets_done = units_done + 1, subnets_done + len(heads)
        progress.report(units_done, subnets_done, force=units_done == len(units))


def load_parts(search_dir):
    """Manifests and finished units of every part in a search folder, checked to belong together
    (same checkpoint, config, batches and arch set) and to cover the arch set exactly once."""
    dirs = sorted(glob.glob(os.path.join(search_dir, "part_*of*")))
    if not dirs:
        raise SearchError(f"no search parts under {search_dir}")
    manifests = {d: read_manifest(os.path.join(d, "manifest.json")) for d in dirs}
    first = manifests[dirs[0]]
    for d, manifest in manifests.items():
        diff = other_inputs(first, manifest)
        if diff:
            raise SearchError(f"part {d} was made with another {', '.join(diff)} than {dirs[0]}")
    splits = sorted({m["shard"][1] for m in manifests.values()})
    if len(splits) > 1:
        named = "; ".join(f"in {k}: " + ", ".join(os.path.basename(d) for d, m in manifests.items()
                                                    if m["shard"][1] == k) for k in splits)
        raise SearchError(f"{search_dir} holds parts of {len(splits)} splits ({named}): remove the folders of "
                          "every split but one")
    n = first["shard"][1]
    missing = sorted(set(range(1, n + 1)) - {m["shard"][0] for m in manifests.values() if m["shard"][1] == n})
    if missing or len(dirs) != n:
        raise SearchError(f"{search_dir} needs parts 1..{n} of {n}: missing {missing or 'none'}, found {len(dirs)}")
    rows, seconds = {}, 0.0
    for d, manifest in manifests.items():
        units = read_units(d)
        seconds += sum(unit["seconds"] for unit in units.values())
        unfinished = sorted(set(manifest["units"]) - set(units))
        if unfinished:
            raise SearchError(f"part {d} is unfinished: {len(unfinished)} of {len(manifest['units'])} units left")
        for prefix, unit in units.items():
            rows.update({prefix * search_tree.heads_per_prefix() + int(h): m for h, m in unit["rows"].items()})
    if len(rows) != first["num_archs"]:
        raise SearchError(f"{search_dir}: parts hold {len(rows)} subnets, the search has {first['num_archs']}")
    if fingerprint([np.array(sorted(rows), np.int64)]) != first.get("archs_sha256"):  # a row relabelled
        raise SearchError(f"{search_dir}: the parts' {len(rows)} subnets are not the search's arch set (their "
                          "archs_sha256 differs from the manifests'): a unit's rows were changed")
    return first, rows, seconds


# ----------------------------------------------------------------------------- scoring a part

# config keys that never change a score: where things live, and the settings of later stages (deploy's
# recal_at reaches a search only through the folder name of a search at another size)
NOT_SCORING = ("output_dir", "base_path", "experiment_name", "refine", "deploy")


def manifest_for(cfg, meta, info, scored, indices, shard, units, size=None):
    """What a part is made from; parts (and a resumed part) must agree on all but shard and units.
    `size`: the input size the validation frames were resized to (None, or the run's own: not
    resized, the run's own search whichever command asks)."""
    if size is not None and tuple(size) == (cfg["input_h"], cfg["input_w"]):
        size = None
    recal, val = scored
    dataset = {k: info[k] for k in ("dataset", "pass", "data_source", "recal_data_source", "input_sizes", "samples")}
    return {"checkpoint": os.path.basename(meta["prefix"]), "checkpoint_type": meta["kind"],
            "global_step": meta["global_step"], "data_source": info["data_source"], "dataset": dataset,
            "config": {k: v for k, v in cfg.items() if k not in NOT_SCORING},
            "input_size": [cfg["input_h"], cfg["input_w"]], "scored_size": list(size) if size else None,
            "recal_batches": len(recal), "val_samples": sum(len(b[1]) for b in val),
            "sample_pixels": [int(p) for p in metrics.sample_pixels(val)],
            "batches_sha256": batches_fingerprint(recal, val),
            "num_archs": len(indices), "archs_sha256": fingerprint([np.array(indices, np.int64)]),
            "space_version": supernet.SPACE.version, "shard": list(shard), "units": [prefix for prefix, _ in units]}


def run_search_dir(run_dir, kind):
    """search_<kind>: the whole space scored on the run's own data at its own size (search.py's default)."""
    return os.path.join(run_dir, f"search_{kind}")


def size_search_dir(run_dir, kind, size, recal_at_size):
    """search_<kind>_at<h>x<w>[_recal_at_size]: the whole space scored with the run's validation
    frames resized to `size` (see size_inputs)."""
    return os.path.join(run_dir, f"search_{kind}_at{size[0]}x{size[1]}" + ("_recal_at_size" if recal_at_size else ""))


def size_inputs(cfg, base, size, recal_at_size):
    """(recal batches, validation batches) and the dataset info of a search at `size`: the run's
    frames (batches.deployment_base) resized to it, their true flow kept at the frame's size. At
    the run's own size BN is recalibrated there whatever `recal_at_size` says: the same batches."""
    recal_at_size = recal_at_size and tuple(size) != (cfg["input_h"], cfg["input_w"])
    data = batches.deployment_batches(base, size, recal_at_size)
    info = {"dataset": "fc2", "pass": None, "data_source": data["data_source"], "recal_data_source":
            data["data_source"], "input_sizes": [list(size)], "samples": sum(len(b[1]) for b in data["val"]),
            "reason": f"{data['data_source']} validation frames at {cfg['input_h']}x{cfg['input_w']} resized to "
                      f"{size[0]}x{size[1]}, EPE at the frame's size; BN recalibrated at "
                      + (f"{size[0]}x{size[1]}" if recal_at_size else "the run's size")}
    return (data["recal"], data["val"]), info


def score_shard(run_dir, kind, search_dir, manifest, units, scored, progress_every):
    """Score the units of one part not yet done, under the part's writer lock: the tree is built
    for every batch size (the validation frames' true flow at the run's size) and the checkpoint
    restored only if there is work left."""
    k, n = manifest["shard"]
    directory = part_dir(search_dir, k, n)
    recal, val = scored
    with ckpt.writer_lock(directory, "search part"):
        done = open_part(directory, manifest)
        left = [u for u in units if u[0] not in done]
        print(f"search: part {k}/{n} of {manifest['num_archs']:,} subnets: {len(units)} units "
              f"({sum(len(h) for _, h in units):,} subnets), {len(units) - len(left)} already done; "
              f"{len(recal)} recalibration batches, {manifest['val_samples']} validation samples; writing {directory}")
        if not left:
            return
        sizes = [tuple(int(v) for v in b[0].shape[1:3]) for b in recal + val]
        frame = tuple(manifest["input_size"]) if manifest["scored_size"] else None

        def build():
            return search_tree.build_tree(sizes, search_tree.has_masks(val), frame)

        with ckpt.restored_session(run_dir, kind, build) as (sess, tree, _):
            score_part(search_tree.TreeScorer(sess, tree, recal, val), units, done, directory, progress_every)
