"""Score many subnets of a trained supernet (all 19,683 by default) exactly, computing every layer
output they share once, then draw the Pareto front of EPE against cost.

A layer's output, and the BN statistics recalibration gives it, depend only on the choices of the
blocks on its path from the input. So the search walks the subnet tree: the trunk (E0 .. Up2) once
per distinct prefix of the first four choices, the heads once per distinct (prefix, head choices on
their path), and only the final flow sums and the metrics once per subnet. Every subnet's EPE
equals `evaluate.evaluate` of that subnet alone on the same batches.

Work is done and written in units (the subnets sharing one trunk prefix), so a killed search
started again with the same command continues where it was; `--shard K/N` scores the K-th of N
disjoint parts and `--merge` combines them.

    python search.py --experiment_name demo                   # the whole space, best checkpoint
    python search.py --sample 200 --seed 1 --max_gmacs 1.0    # a seeded sample, then a budget
    python search.py --shard 2/4 ; python search.py --merge --shard_count 4
"""
import argparse
import csv
import glob
import hashlib
import json
import os
import sys
import time

import numpy as np
import devices  # before tensorflow: quietens its start-up (see devices.py)
import tensorflow as tf

import ckpt
import data_fc2
import evaluate
import export
import supernet

HEAD_BLOCKS = len(supernet.BLOCKS) - len(supernet.TRUNK)           # 5 head choices after the 4 trunk ones
HEADS_PER_PREFIX = supernet.NUM_OPTIONS ** HEAD_BLOCKS               # 243 subnets share one trunk prefix
METRICS = ("epe", "px1", "px3", "px5", "fl_all")
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")


class SearchError(ValueError):
    """A bad flag, arch list, part or search folder; the message names it."""


# ----------------------------------------------------------------------------- the subnet tree (TF graph)

def _moments_bn(record):
    """BN as recalibration runs it (batch statistics); records each BN's batch moments by scope."""
    def bn(x, scope, zero_gamma=False):
        mean, var = supernet.batch_moments(x)
        record[scope] = (mean, var)
        return supernet.normalize(x, scope, mean, var, zero_gamma)
    return bn


def _fed_bn(record):
    """BN in inference mode with statistics fed per call: placeholders recorded by scope."""
    def bn(x, scope, zero_gamma=False):
        channels = [int(x.shape[-1])]
        stats = (tf.compat.v1.placeholder(tf.float32, channels), tf.compat.v1.placeholder(tf.float32, channels))
        record[scope] = stats
        return supernet.normalize(x, scope, *stats, zero_gamma)
    return bn


def _stage(name, layer, input_shape):
    """One trunk layer in both BN forms: {"moments"|"fed": {"input", "output", "bn"}}."""
    forms = {}
    for form, make_bn in (("moments", _moments_bn), ("fed", _fed_bn)):
        record = {}
        x = tf.compat.v1.placeholder(tf.float32, [None, *input_shape], f"{name.replace('/', '_')}_{form}")
        forms[form] = {"input": x, "output": layer(x, make_bn(record)), "bn": record}
    return forms


def build_trunk(h, w):
    """Every trunk stage at input size h x w: the stem, each ResBlock of each depth block (nested
    depth: block option o runs ResBlocks 1..o+1) and each transition. Returns {name: stage}."""
    stages = {"stem": _stage("stem", supernet.stem, [h, w, supernet.INPUT_CHANNELS])}
    shape = stages["stem"]["fed"]["output"].shape.as_list()[1:]
    for block, after in supernet.TRUNK:
        for b in range(1, supernet.NUM_OPTIONS + 1):
            name = f"{block}/rb{b}"
            stages[name] = _stage(name, lambda x, bn, scope=name: supernet.resblock(x, scope, bn), shape)
        stages[after] = _stage(after, lambda x, bn, t=after: supernet.transition(x, t, bn, h, w), shape)
        shape = stages[after]["fed"]["output"].shape.as_list()[1:]
    return stages


def prefix_choices(prefix):
    """The 4 trunk choices (EB0, EB1, DB0, DB1) of a prefix index 0..80."""
    return supernet.index_to_arch(prefix * HEADS_PER_PREFIX)[:len(supernet.TRUNK)]


def _head_digits(index):
    """The 5 head choices (H0Out, H1, H1Out, H2, H2Out) of a head index 0..242."""
    return supernet.index_to_arch(index)[len(supernet.TRUNK):]


def _with_bn(make_bn, layer):
    """Build `layer(bn)`, a layer with exactly one BN; returns its output and that BN's statistics."""
    record = {}
    output = layer(make_bn(record))
    (stats,) = record.values()
    return output, stats


def build_heads(h, w, trunk_shape, masked):
    """The head fan-out of one trunk prefix: from the Up2 output to the metric sums of all 243
    head combinations, and the recalibration moments of H1 (3 options) and H2 (9 nodes).

    Each head layer runs once per distinct (choices on its path): H0Out 3, H1 3, H1Out 9, H2 9,
    H2Out 27. Only the final accumulation and the metrics run per subnet, 9 at a time. `masked`:
    the validation batches carry validity masks (fed as "valid"), else every pixel counts.
    """
    full, half = supernet.level_sizes(h, w)[:2]
    options = range(supernet.NUM_OPTIONS)
    up2 = tf.compat.v1.placeholder(tf.float32, [None, *trunk_shape], "heads_up2")
    gt = tf.compat.v1.placeholder(tf.float32, [None, h, w, supernet.FLOW_CHANNELS], "heads_gt")
    valid = tf.compat.v1.placeholder(tf.float32, [None, h, w], "heads_valid") if masked else None
    moments, fed, sums = {}, {}, {}
    for o1 in options:  # recalibration form: batch statistics all the way down
        y1, moments[("H1", o1)] = _with_bn(_moments_bn, lambda bn: supernet.feature_head(up2, "H1", o1, bn, half))
        for o2 in options:
            moments[("H2", o1, o2)] = _with_bn(_moments_bn, lambda bn: supernet.feature_head(y1, "H2", o2, bn, full))[1]
    flow4 = [supernet.flow_head(up2, "H0Out", o0) for o0 in options]
    for o1 in options:  # inference form: recalibrated statistics fed per node
        y1, fed[("H1", o1)] = _with_bn(_fed_bn, lambda bn: supernet.feature_head(up2, "H1", o1, bn, half))
        # flow_1/2 of the 9 (H0Out, H1Out) combinations, resized to full size: [9, B, H, W, 2]
        flow2 = tf.stack([supernet.accumulate(flow4[o0], supernet.flow_head(y1, "H1Out", o1o))
                          for o0 in options for o1o in options])
        flat = tf.reshape(flow2, tf.concat([[-1], tf.shape(flow2)[2:]], 0))
        flow2_up = tf.reshape(supernet.resize(flat, full), tf.concat([tf.shape(flow2)[:2], [h, w, 2]], 0))
        for o2 in options:
            y2, fed[("H2", o1, o2)] = _with_bn(_fed_bn, lambda bn: supernet.feature_head(y1, "H2", o2, bn, full))
            for o2o in options:  # supernet.accumulate's sum, broadcast over the 9 subnets
                flow1 = flow2_up + supernet.flow_head(y2, "H2Out", o2o)[None]
                sums[(o1, o2, o2o)] = evaluate.flow_metric_sums(flow1, gt, valid)  # each [9]
    return {"up2": up2, "gt": gt, "valid": valid, "moments": moments, "fed": fed, "sums": sums}


def node_key(layer, arch):
    """The computation a conv of `supernet.layer_table` belongs to: (layer, the choices on its path).
    Two subnets with equal keys compute the same output (and BN statistics) there."""
    block = layer.split("/")[0]
    if block in ("E0", "E1"):
        return layer, ()
    for i, (depth_block, after) in enumerate(supernet.TRUNK):
        if block == depth_block:  # nested depth: the block's own choice only says how many ResBlocks run
            return layer, tuple(arch[:i])
        if block == after:
            return layer, tuple(arch[:i + 1])
    heads = {"H0Out": (4,), "H1": (5,), "H1Out": (5, 6), "H2": (5, 7), "H2Out": (5, 7, 8)}[block]
    return layer, tuple(arch[:len(supernet.TRUNK)]) + tuple(arch[i] for i in heads)


def shared_macs(h, w, archs=None):
    """(MACs scoring `archs` (default: all) with shared computation, MACs scoring each alone),
    per image pair: each distinct node_key counted once against every subnet's own count."""
    archs = archs or [supernet.index_to_arch(i) for i in range(supernet.NUM_ARCHS)]
    nodes, alone = {}, 0
    for arch in archs:
        for layer, k, cin, cout, oh, ow, _ in supernet.layer_table(arch, h, w):
            macs = k * k * cin * cout * oh * ow
            nodes[node_key(layer, arch)] = macs
            alone += macs
    return sum(nodes.values()), alone


def build_tree(sizes, masked=False):
    """Trunk and heads for each input size (h, w) in `sizes` (the recalibration batches' and the
    validation batches' sizes may differ); all share the supernet's variables by name."""
    tree = {}
    for h, w in sorted(set(sizes)):
        trunk = build_trunk(h, w)
        trunk_shape = trunk["Up2"]["fed"]["output"].shape.as_list()[1:]
        tree[(h, w)] = {"trunk": trunk, "heads": build_heads(h, w, trunk_shape, masked)}
    return tree


# ----------------------------------------------------------------------------- walking the tree

def trunk_path(prefix):
    """The trunk nodes a prefix of the first four choices runs through, in order. A node is
    (stage, the choices its output depends on): ResBlock b of block i depends on the choices
    before block i only (depth is nested), a transition on the choices up to its block."""
    path = [("stem", ())]
    for i, (block, after) in enumerate(supernet.TRUNK):
        path += [(f"{block}/rb{b}", tuple(prefix[:i])) for b in range(1, prefix[i] + 2)]
        path.append((after, tuple(prefix[:i + 1])))
    return path


def has_masks(val_batches):
    """Whether any validation batch has pixels that do not count (a validity mask with zeros)."""
    return any(not np.all(evaluate.batch_parts(b)[2]) for b in val_batches)


def _size(images):
    return tuple(int(v) for v in images.shape[1:3])


class TreeScorer:
    """Scores subnets one trunk prefix at a time on fixed recalibration and validation batches.

    Keeps the trunk activations of the current path (for every batch), so consecutive prefixes
    that share their first choices reuse them. Recalibration is evaluate's: each BN node's
    statistics are the running average (supernet.recal_average) of its batch moments over the
    recalibration batches, computed in training mode from its parents' training-mode outputs.
    """

    def __init__(self, sess, tree, recal_batches, val_batches):
        self.sess, self.tree = sess, tree
        self.recal_images = [images for images, *_ in recal_batches]
        self.val = [evaluate.batch_parts(b) for b in val_batches]
        self.activations = {}  # trunk node -> (recal outputs, val outputs), one array per batch
        self.tick = lambda: None  # called after every batch: progress reporting

    def _recalibrate(self, form_of, inputs):
        """Run a training-mode form over the recalibration inputs. form_of(size) gives its (input
        placeholder, output or None, {name: batch moments}); returns (outputs, averaged statistics)."""
        outputs, stats = [], {}
        for k, x in enumerate(inputs):
            placeholder, output, moments = form_of(_size(self.recal_images[k]))
            out = self.sess.run({"output": output, "moments": moments} if output is not None else {"moments": moments},
                                {placeholder: x})
            outputs.append(out.get("output"))
            self.tick()
            for name, (mean, var) in out["moments"].items():
                old = stats.get(name, (mean, var))
                stats[name] = (supernet.recal_average(old[0], mean, np.float32(k)),
                               supernet.recal_average(old[1], var, np.float32(k)))
        return outputs, stats

    def _trunk_node(self, stage, recal_inputs, val_inputs):
        """One trunk node on every batch: training-mode outputs and statistics, then inference."""
        def moments_form(size):
            form = self.tree[size]["trunk"][stage]["moments"]
            return form["input"], form["output"], form["bn"]

        recal_out, stats = self._recalibrate(moments_form, recal_inputs)
        val_out = []
        for (images, _, _), x in zip(self.val, val_inputs):
            graph = self.tree[_size(images)]["trunk"][stage]["fed"]
            feed = {graph["input"]: x}
            for scope, (mean, var) in graph["bn"].items():
                feed.update({mean: stats[scope][0], var: stats[scope][1]})
            val_out.append(self.sess.run(graph["output"], feed))
            self.tick()
        return recal_out, val_out

    def trunk(self, prefix):
        """Up2 outputs of a prefix: (per recalibration batch in training mode, per validation batch)."""
        path = trunk_path(prefix)
        self.activations = {node: acts for node, acts in self.activations.items() if node in path}
        recal_in, val_in = self.recal_images, [images for images, _, _ in self.val]
        for node in path:
            if node not in self.activations:
                self.activations[node] = self._trunk_node(node[0], recal_in, val_in)
            recal_in, val_in = self.activations[node]
        return recal_in, val_in

    def score_prefix(self, prefix, heads):
        """Metrics of the subnets `prefix` + head index (0..242) for each of `heads`:
        {head index: {"epe", "px1", "px3", "px5", "fl_all"}}. Only the head nodes they use run."""
        recal_up2, val_up2 = self.trunk(prefix)
        digits = {head: _head_digits(head) for head in heads}
        # Run whole H1 subtrees: at most 7 distinct fetch sets, so TensorFlow prepares few executors.
        h1_options = sorted({d[1] for d in digits.values()})
        options = range(supernet.NUM_OPTIONS)
        nodes = [("H1", o1) for o1 in h1_options] + [("H2", o1, o2) for o1 in h1_options for o2 in options]
        groups = [(o1, o2, o2o) for o1 in h1_options for o2 in options for o2o in options]

        def moments_form(size):
            heads_graph = self.tree[size]["heads"]
            return heads_graph["up2"], None, {n: heads_graph["moments"][n] for n in nodes}

        _, stats = self._recalibrate(moments_form, recal_up2)
        totals = {}
        for (images, flows, valid), x in zip(self.val, val_up2):
            graph = self.tree[_size(images)]["heads"]
            feed = {graph["up2"]: x, graph["gt"]: flows}
            if graph["valid"] is not None:  # built only where some batch has pixels that do not count
                feed[graph["valid"]] = valid
            for node in nodes:
                feed.update(dict(zip(graph["fed"][node], stats[node])))
            sums = self.sess.run({g: graph["sums"][g] for g in groups}, feed)
            self.tick()
            for group, values in sums.items():
                for key, value in values.items():
                    totals.setdefault(group, {}).setdefault(key, np.zeros(len(value)))
                    totals[group][key] += value.astype(np.float64)
        results = {}
        for head, d in digits.items():  # within a group, subnets are ordered (H0Out, H1Out)
            group, position = (d[1], d[3], d[4]), d[0] * supernet.NUM_OPTIONS + d[2]
            results[head] = evaluate.metrics_from_sums({k: float(v[position]) for k, v in totals[group].items()})
        return results


def score_archs(scorer, archs):
    """Metrics of each arch (tuples of 9 ints) with shared computation: {arch: metrics}."""
    indices = [supernet.arch_to_index(a) for a in archs]
    results = {}
    for prefix, heads in make_units(indices):
        scored = scorer.score_prefix(prefix_choices(prefix), heads)
        results.update({prefix * HEADS_PER_PREFIX + head: metrics for head, metrics in scored.items()})
    return {supernet.index_to_arch(i): results[i] for i in indices}


# ----------------------------------------------------------------------------- what to score, in units

def read_archs_file(path):
    """Arch indices from a file of codes, one a line (blank lines and # comments skipped)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise SearchError(f"--archs_file {path}: {err.strerror}") from None
    indices = []
    for number, line in enumerate(lines, 1):
        code = line.split("#")[0].strip()
        if code:
            try:
                indices.append(supernet.arch_to_index(supernet.parse_arch(code)))
            except supernet.ArchError as err:
                raise SearchError(f"--archs_file {path} line {number}: {err}") from None
    if not indices:
        raise SearchError(f"--archs_file {path} holds no arch code")
    return indices


def select_archs(args):
    """Sorted, distinct arch indices: the whole space, or --archs/--archs_file, or --sample N."""
    if args.sample is not None and (args.archs or args.archs_file):
        raise SearchError("--sample cannot be combined with --archs or --archs_file")
    if args.sample is not None:
        if not 1 <= args.sample <= supernet.NUM_ARCHS:
            raise SearchError(f"--sample {args.sample} is outside 1..{supernet.NUM_ARCHS}")
        return sorted(int(i) for i in np.random.default_rng(args.seed).choice(supernet.NUM_ARCHS, args.sample, False))
    if not (args.archs or args.archs_file):
        return list(range(supernet.NUM_ARCHS))
    indices = read_archs_file(args.archs_file) if args.archs_file else []
    for code in args.archs or []:
        try:
            indices.append(supernet.arch_to_index(supernet.parse_arch(code)))
        except supernet.ArchError as err:
            raise SearchError(f"--archs: {err}") from None
    return sorted(set(indices))


def make_units(indices):
    """Group arch indices by trunk prefix: [(prefix index, [head indices])] in prefix order. A unit
    is the work written at once: at most 243 subnets sharing their trunk."""
    units = {}
    for index in indices:
        units.setdefault(index // HEADS_PER_PREFIX, []).append(index % HEADS_PER_PREFIX)
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


# ----------------------------------------------------------------------------- durable parts

def fingerprint(arrays):
    """sha256 of a sequence of numpy arrays: the identity of a set of batches or archs."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def part_dir(search_dir, k, n):
    """Folder of the K-th of N parts (one process writes it)."""
    return os.path.join(search_dir, f"part_{k}of{n}")


def open_part(directory, manifest):
    """Create or continue a part: its manifest must equal ours, else SearchError naming it.
    Returns the results of the units already finished there, {prefix: unit}."""
    os.makedirs(os.path.join(directory, "units"), exist_ok=True)
    path = os.path.join(directory, "manifest.json")
    if os.path.exists(path):
        theirs = ckpt.read_json(path, "search part manifest")
        diff = sorted(k for k in set(theirs) | set(manifest) if theirs.get(k) != manifest.get(k))
        if diff:
            raise SearchError(f"{directory} was started with another {', '.join(diff)}: move it away to start over")
    else:
        ckpt.write_json_atomic(path, manifest)
    for stale in glob.glob(os.path.join(directory, "units", "*.tmp*")):  # left by a killed process
        os.remove(stale)
    return read_units(directory)


def read_units(directory):
    """The finished units of a part: {prefix index: {"rows": {head: metrics}, "seconds"}}."""
    units = {}
    for path in sorted(glob.glob(os.path.join(directory, "units", "unit_*.json"))):
        unit = ckpt.read_json(path, "search unit")
        units[unit["prefix"]] = unit
    return units


def write_unit(directory, prefix, rows, seconds):
    """Commit one finished unit atomically: a killed search never leaves half a unit."""
    path = os.path.join(directory, "units", f"unit_{prefix:02d}.json")
    ckpt.write_json_atomic(path, {"prefix": prefix, "rows": {str(h): m for h, m in rows.items()}, "seconds": seconds})


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
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


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
        rows = scorer.score_prefix(prefix_choices(prefix), heads)
        write_unit(directory, prefix, rows, time.time() - start)
        units_done, subnets_done = units_done + 1, subnets_done + len(heads)
        progress.report(units_done, subnets_done, force=units_done == len(units))


# ----------------------------------------------------------------------------- merging parts, the front

def load_parts(search_dir):
    """Manifests and finished units of every part in a search folder, checked to belong together
    (same checkpoint, config, batches and arch set) and to cover the arch set exactly once."""
    dirs = sorted(glob.glob(os.path.join(search_dir, "part_*of*")))
    if not dirs:
        raise SearchError(f"no search parts under {search_dir}")
    manifests = {d: ckpt.read_json(os.path.join(d, "manifest.json"), "search part manifest") for d in dirs}
    first = manifests[dirs[0]]
    for d, manifest in manifests.items():
        diff = sorted(k for k in set(first) | set(manifest)
                      if k not in ("shard", "units") and first.get(k) != manifest.get(k))
        if diff:
            raise SearchError(f"part {d} was made with another {', '.join(diff)} than {dirs[0]}")
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
            rows.update({prefix * HEADS_PER_PREFIX + int(h): m for h, m in unit["rows"].items()})
    if len(rows) != first["num_archs"]:
        raise SearchError(f"{search_dir}: parts hold {len(rows)} subnets, the search has {first['num_archs']}")
    return first, rows, seconds


def pareto_front(rows, cost, maximise=False):
    """The rows no other row beats on both EPE and `cost` (lower EPE; lower cost, or higher
    with `maximise`), in order of cost. Of rows equal on both, the first in arch order stays."""
    sign = -1 if maximise else 1
    front, best = [], float("inf")
    for row in sorted(rows, key=lambda r: (sign * r[cost], r["epe"])):
        if row["epe"] < best:
            front.append(row)
            best = row["epe"]
    return front


def table_rows(metrics, h, w, latency_table=None):
    """One row per subnet: arch code, metrics, params, GMACs (and Ethos-U55 FPS), sorted by EPE."""
    rows = []
    for index, m in metrics.items():
        arch = supernet.index_to_arch(index)
        row = {"arch": supernet.format_arch(arch), **{k: m[k] for k in METRICS},
               "params": supernet.count_params(arch, h, w), "gmacs": supernet.count_macs(arch, h, w) / 1e9}
        if latency_table is not None:
            row["fps"] = latency_fps(latency_table, arch)
        rows.append((row["epe"], index, row))
    return [row for _, _, row in sorted(rows, key=lambda r: r[:2])]


def write_scores_csv(path, rows):
    """scores.csv, written atomically; floats in their shortest exact form, so equal runs give equal bytes."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def budget_choice(rows, fronts, args):
    """Lines naming the best subnet within --max_gmacs/--max_params/--min_fps and its front neighbours."""
    limits = [("gmacs", args.max_gmacs, 1), ("params", args.max_params, 1), ("fps", args.min_fps, -1)]
    limits = [(key, value, sign) for key, value, sign in limits if value is not None]
    if not limits:
        return []
    within = [r for r in rows if all(sign * r[key] <= sign * value for key, value, sign in limits)]
    wording = ", ".join(f"{key} {'<=' if sign > 0 else '>='} {value:g}" for key, value, sign in limits)
    if not within:
        return [f"no scored subnet within the budget ({wording})"]
    best = within[0]  # rows are sorted by EPE
    lines = [f"best within the budget ({wording}): {_describe(best)}"]
    front = fronts["epe_gmacs"]
    cheaper = [r for r in front if r["gmacs"] < best["gmacs"]][-1:]
    dearer = [r for r in front if r["gmacs"] > best["gmacs"]][:1]
    for label, group in (("cheaper", cheaper), ("dearer", dearer)):
        lines += [f"  front neighbour, {label}: {_describe(r)}" for r in group]
    return lines


def _describe(row):
    fps = f", {row['fps']:.1f} FPS" if "fps" in row else ""
    return f"{row['arch']}  EPE {row['epe']:.4f}, {row['gmacs']:.3f} GMAC, {row['params'] / 1e6:.2f} M params{fps}"


def latency_fps(table, arch):
    """Ethos-U55 FPS of a subnet predicted from a per-layer latency table (export.py builds it)."""
    return export.predict_fps(table, arch)


def plot_front(path, rows, fronts, marked, title):
    """pareto.png: EPE against GMACs for every subnet, the front as a line, marked subnets labelled;
    a second panel against Ethos-U55 FPS when the rows have it."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    panels = [("gmacs", "GMACs per image pair", "epe_gmacs")]
    if "fps" in rows[0]:
        panels.append(("fps", "Ethos-U55 FPS", "epe_fps"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.5), squeeze=False)
    for ax, (cost, label, front_key) in zip(axes[0], panels):
        ax.scatter([r[cost] for r in rows], [r["epe"] for r in rows], s=3, c="0.6", alpha=0.5, lw=0,
                   label=f"{len(rows):,} subnets")
        front = fronts[front_key]
        ax.plot([r[cost] for r in front], [r["epe"] for r in front], "-o", c="tab:red", ms=3, lw=1.2,
                label=f"Pareto front ({len(front)})")
        for name, (group, style) in marked.items():
            ax.plot([r[cost] for r in group], [r["epe"] for r in group], style, ms=7, mfc="none", mew=1.5, label=name)
            if len(group) == 1:
                ax.annotate(name, (group[0][cost], group[0]["epe"]), textcoords="offset points", xytext=(6, 6),
                            fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("EPE (px, lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def marked_subnets(rows, run_dir, cfg):
    """The extremes and the run's eval pool among the scored rows: {label: (rows, marker style)}."""
    by_code = {r["arch"]: r for r in rows}
    marked = {}
    pool_path = os.path.join(run_dir, f"eval_pool_{cfg['eval_pool_size']}.json")
    if os.path.exists(pool_path):
        pool = [by_code[c] for c in ckpt.read_json(pool_path, "eval pool")["archs"] if c in by_code]
        if pool:
            marked["eval pool"] = (pool, "o")
    for label, option, style in (("all-0", 0, "s"), ("all-2", 2, "D")):
        code = supernet.format_arch((option,) * len(supernet.BLOCKS))
        if code in by_code:
            marked[label] = ([by_code[code]], style)
    return marked


def finish(search_dir, run_dir, args, hardware):
    """Merge the parts into scores.csv, pareto.json and pareto.png; print the front and the budget."""
    manifest, metrics, seconds = load_parts(search_dir)
    h, w = manifest["input_size"]
    table = load_latency_table(args.latency_table, h, w) if args.latency_table else None
    rows = table_rows(metrics, h, w, table)
    fronts = {"epe_gmacs": pareto_front(rows, "gmacs"), "epe_params": pareto_front(rows, "params")}
    if table is not None:
        fronts["epe_fps"] = pareto_front(rows, "fps", maximise=True)
    write_scores_csv(os.path.join(search_dir, "scores.csv"), rows)
    provenance = {k: manifest[k] for k in manifest if k not in ("shard", "units")}
    provenance.update(run_dir=run_dir, unit_seconds=seconds, latency_table=args.latency_table,
                      parts=manifest["shard"][1], devices=hardware)
    ckpt.write_json_atomic(os.path.join(search_dir, "pareto.json"),
                           {"provenance": provenance, "fronts": fronts, "best": rows[0]})
    png = os.path.join(search_dir, "pareto.png")
    plot_front(png, rows, fronts, marked_subnets(rows, run_dir, manifest["config"]),
               f"{os.path.basename(run_dir)} {manifest['checkpoint_type']} checkpoint "
               f"(step {manifest['global_step']}), "
               f"{manifest['data_source']} data, {manifest['val_samples']} validation samples")
    print(f"scored {len(rows):,} subnets ({seconds:.0f} s of unit work); best {_describe(rows[0])}")
    print(f"EPE/GMACs Pareto front, {len(fronts['epe_gmacs'])} subnets:")
    for row in fronts["epe_gmacs"]:
        print(f"  {_describe(row)}")
    for line in budget_choice(rows, fronts, args):
        print(line)
    print(f"wrote {os.path.join(search_dir, 'scores.csv')}, {os.path.join(search_dir, 'pareto.json')}")
    print(png)
    return rows, fronts


def load_latency_table(path, h, w):
    """A per-layer Ethos-U55 latency table made at this input size, or SearchError naming the file."""
    try:
        table = export.load_latency_table(path)
    except ValueError as err:
        raise SearchError(str(err)) from None
    if list(table.get("input_size", [])) != [h, w]:
        raise SearchError(f"--latency_table {path} was made at input size {table.get('input_size')}, "
                          f"the run is {h}x{w}")
    return table


# ----------------------------------------------------------------------------- CLI

def parse_args(argv):
    """Command-line flags; scoring flags left unset fall back to the run's saved config."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    evaluate.add_run_flags(parser, "search")
    parser.add_argument("--space", default="all", choices=("all",), help="score the whole space (the default)")
    parser.add_argument("--archs", nargs="+", metavar="CODE", help="score these arch codes instead")
    parser.add_argument("--archs_file", help="score the codes in this file, one a line")
    parser.add_argument("--sample", type=int, help="score N archs drawn without replacement with --seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--shard", default="1/1", help="score the K-th of N disjoint parts (K/N, 1-based)")
    parser.add_argument("--merge", action="store_true", help="combine finished parts into the outputs, score nothing")
    parser.add_argument("--max_gmacs", type=float, help="budget: print the best subnet with at most this many GMACs")
    parser.add_argument("--max_params", type=float, help="budget: at most this many parameters")
    parser.add_argument("--min_fps", type=float, help="budget: at least this Ethos-U55 FPS (needs --latency_table)")
    parser.add_argument("--latency_table", help="per-layer Ethos-U55 latency table from export.py: adds an FPS column")
    parser.add_argument("--progress_every", type=float, default=10.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    if args.min_fps is not None and not args.latency_table:
        parser.error("--min_fps needs --latency_table")
    return args


def manifest_for(cfg, meta, info, batches, indices, shard, units):
    """What a part is made from; parts (and a resumed part) must agree on all but shard and units."""
    recal, val = batches
    dataset = {k: info[k] for k in ("dataset", "pass", "data_source", "recal_data_source", "input_sizes", "samples")}
    return {"checkpoint": os.path.basename(meta["prefix"]), "checkpoint_type": meta["kind"],
            "global_step": meta["global_step"], "data_source": info["data_source"], "dataset": dataset,
            "config": {k: v for k, v in cfg.items() if k not in ("output_dir", "base_path", "experiment_name")},
            "input_size": [cfg["input_h"], cfg["input_w"]], "recal_batches": len(recal),
            "val_samples": sum(len(b[1]) for b in val),
            "batches_sha256": fingerprint([a for b in recal + val for a in b if a is not None]),
            "num_archs": len(indices), "archs_sha256": fingerprint([np.array(indices, np.int64)]),
            "shard": list(shard), "units": [prefix for prefix, _ in units]}


def score(args, run_dir, cfg, search_dir, batches, info):
    """Score this process's part of the search; returns True when it was the only part."""
    k, n = parse_shard(args.shard)
    indices = select_archs(args)
    units = shard_units(make_units(indices), k, n)
    meta = dict(ckpt.load_meta(run_dir, args.checkpoint_type), kind=args.checkpoint_type)
    directory = part_dir(search_dir, k, n)
    with ckpt.writer_lock(directory, "search part"):
        score_locked(args, run_dir, directory, manifest_for(cfg, meta, info, batches, indices, (k, n), units),
                     units, batches, indices)
    return n == 1


def score_locked(args, run_dir, directory, manifest, units, batches, indices):
    """Score the units of a part not yet done (the caller holds the part's writer lock)."""
    k, n = manifest["shard"]
    done = open_part(directory, manifest)
    left = [u for u in units if u[0] not in done]
    print(f"search: part {k}/{n} of {len(indices):,} subnets: {len(units)} units ({sum(len(h) for _, h in units):,} "
          f"subnets), {len(units) - len(left)} already done; {len(batches[0])} recalibration batches, "
          f"{sum(len(b[1]) for b in batches[1])} validation samples; writing {directory}")
    if left:
        graph = tf.Graph()
        with graph.as_default():
            tree = build_tree([_size(b[0]) for b in batches[0] + batches[1]], has_masks(batches[1]))
            saver = tf.compat.v1.train.Saver(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
        graph.finalize()
        with tf.compat.v1.Session(graph=graph) as sess:
            ckpt.restore(sess, saver, run_dir, args.checkpoint_type)
            score_part(TreeScorer(sess, tree, *batches), units, done, directory, args.progress_every)


def search_dir_for(run_dir, args, suffix):
    """search_<checkpoint type><dataset suffix>[_<arch set>]: the whole space, a sample, a list and
    another dataset never share a folder."""
    name = f"search_{args.checkpoint_type}{suffix}"
    if args.sample is not None:
        name += f"_sample{args.sample}_seed{args.seed}"
    elif args.archs or args.archs_file:
        name += "_archs" + fingerprint([np.array(select_archs(args), np.int64)])[:8]
    return os.path.join(run_dir, name)


def run(args):
    """Score (this part of) the search, then write the outputs when all parts are done."""
    hardware = devices.report()
    run_dir = evaluate.run_dir_of(args)
    cfg = evaluate.run_config(args, run_dir)
    if evaluate.standalone_arch(cfg):
        raise SearchError(f"{run_dir} is a standalone run of {cfg['arch']}: search needs a supernet run")
    search_dir = search_dir_for(run_dir, args, evaluate.result_suffix(args))
    if args.merge:  # the parts hold every score: no data is read
        return finish(search_dir, run_dir, args, hardware)
    recal, val, info = evaluate.dataset_batches(cfg, args)
    print(info["reason"])
    # Every validation batch is visited once per trunk node: hold them in memory, read once.
    if score(args, run_dir, cfg, search_dir, (recal, list(val)), info):
        return finish(search_dir, run_dir, args, hardware)
    print(f"part {args.shard} done; when every part is, combine them: python search.py --merge "
          f"--experiment_name {os.path.basename(run_dir)} --checkpoint_type {args.checkpoint_type}")
    return None


def main(argv=None):
    """Entry point: one-line error and exit 1 on bad input."""
    return evaluate.exit_code(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
