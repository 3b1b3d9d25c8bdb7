"""The subnet tree: score many subnets exactly, computing every layer output they share once.

A layer's output, and the BN statistics recalibration gives it, depend only on the choices of the
blocks on its path from the input (supernet.SPACE.parents). So the tree has a trunk node per
(trunk layer, choices of its parents) (one per ResBlock of a depth block: depth is nested, Deep3
passes through Deep1 and Deep2), and a head fan-out per trunk prefix (the choices of the trunk
blocks): each feature head once per choice of the feature heads on its path, each flow head once
per (its feature head's path, its own choice), and only the accumulation of the flow scales and
the metrics once per subnet, in stacks of every combination of the flow heads but the last. Every
subnet's metrics equal scoring.score_subnet of that subnet alone on the same batches.

Everything here reads the search space table: another table (more options, other kernels, more
trunk stages or refinement scales within the family supernet.Space accepts) builds its own tree.
"""
import itertools
import math

import numpy as np
from tensorflow_quiet import tf

import batches
import metrics
import supernet


def heads_per_prefix():
    """Subnets sharing one trunk prefix: the product of the head blocks' option counts."""
    space = supernet.SPACE
    return math.prod(space.num_options[len(space.trunk_blocks):])


def num_prefixes():
    """Distinct trunk prefixes: the product of the trunk blocks' option counts."""
    return supernet.SPACE.num_archs // heads_per_prefix()


def prefix_choices(prefix):
    """The trunk blocks' choices of prefix index `prefix` (block order, first most significant)."""
    return supernet.index_to_arch(prefix * heads_per_prefix())[:len(supernet.SPACE.trunk_blocks)]


def head_choices(head):
    """{head block: choice} of head index `head` within a prefix."""
    space = supernet.SPACE
    return dict(zip(space.head_blocks, supernet.index_to_arch(head)[len(space.trunk_blocks):]))


def _options(name):
    return range(len(supernet.SPACE.by_name[name].options))


# ----------------------------------------------------------------------------- the tree as a TF graph

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
    """One trunk stage in both BN forms: {"moments"|"fed": {"input", "output", "bn"}}."""
    forms = {}
    for form, make_bn in (("moments", _moments_bn), ("fed", _fed_bn)):
        record = {}
        x = tf.compat.v1.placeholder(tf.float32, [None, *input_shape], f"{name.replace('/', '_')}_{form}")
        forms[form] = {"input": x, "output": layer(x, make_bn(record)), "bn": record}
    return forms


def build_trunk(h, w):
    """Every trunk stage at input size h x w: each fixed layer, and each ResBlock of each depth
    block (option o of a block runs its first `depth` ResBlocks). Returns {stage name: stage}."""
    stages, shape = {}, [h, w, supernet.INPUT_CHANNELS]
    for layer in supernet.SPACE.trunk:
        if layer.op == "depth":
            for b in range(1, max(layer.options) + 1):
                name = f"{layer.name}/rb{b}"
                stages[name] = _stage(name, lambda x, bn, scope=name: supernet.resblock(x, scope, bn), shape)
        else:
            stages[layer.name] = _stage(
                layer.name, lambda x, bn, row=layer: supernet.apply_layer(row, x, None, bn, h, w), shape)
            shape = stages[layer.name]["fed"]["output"].shape.as_list()[1:]
    return stages


def _with_bn(make_bn, layer):
    """Build `layer(bn)`, a layer with exactly one BN; returns its output and that BN's statistics."""
    record = {}
    output = layer(make_bn(record))
    (stats,) = record.values()
    return output, stats


def _resize_stack(stack, size):
    """Bilinear resize of stacked flows [N, B, h, w, 2] to [N, B, size, 2] (supernet.accumulate's resize)."""
    flat = tf.reshape(stack, tf.concat([[-1], tf.shape(stack)[2:]], 0))
    return tf.reshape(supernet.resize(flat, size), tf.concat([tf.shape(stack)[:2], [*size, 2]], 0))


def build_heads(h, w, trunk_shape, masked, frame=None):
    """The head fan-out of one trunk prefix: from the trunk's output to the metric sums of every
    head combination, and the recalibration moments of every feature-head node.

    Feature head j runs once per choice of feature heads 0..j (moments and inference forms); each
    flow head once per (the feature-head path it reads, its own choice). The accumulated flows of
    every combination of the flow heads but the last are stacked, resized once per path, and the
    last flow head's output is added to the stack: sums[(feature choices..., last flow choice)]
    holds the metric sums of that stack, one per combination of the other flow heads (the first
    flow head's choice most significant). `masked`: validity masks are fed as "valid". `frame`:
    the size of the true flow ("gt"), default h x w (see metrics.to_frame).
    """
    space = supernet.SPACE
    features, flows = [space.by_name[n] for n in space.feature_heads], [space.by_name[n] for n in space.flow_heads]
    sizes = supernet.level_sizes(h, w)
    trunk_out = tf.compat.v1.placeholder(tf.float32, [None, *trunk_shape], "heads_input")
    frame = tuple(frame or (h, w))
    gt = tf.compat.v1.placeholder(tf.float32, [None, *frame, supernet.FLOW_CHANNELS], "heads_gt")
    valid = tf.compat.v1.placeholder(tf.float32, [None, *frame], "heads_valid") if masked else None
    moments, fed, sums = {}, {}, {}

    def moments_level(x, j, path):  # recalibration form: batch statistics all the way down
        for o in _options(features[j].name):
            y, moments[(features[j].name, *path, o)] = _with_bn(
                _moments_bn, lambda bn: supernet.apply_layer(features[j], x, o, bn, h, w))
            if j + 1 < len(features):
                moments_level(y, j + 1, path + (o,))

    def fed_level(x, j, path, coarse):  # inference form; coarse: the stacked flows resized to level j + 1
        for o in _options(features[j].name):
            y, fed[(features[j].name, *path, o)] = _with_bn(
                _fed_bn, lambda bn: supernet.apply_layer(features[j], x, o, bn, h, w))
            residuals = [supernet.apply_layer(flows[j + 1], y, r, None, h, w) for r in _options(flows[j + 1].name)]
            if j + 1 == len(features):  # supernet.accumulate's sum, broadcast over the stack
                for r, residual in enumerate(residuals):
                    sums[(*path, o, r)] = metrics.flow_metric_sums(metrics.to_frame(coarse + residual[None], frame),
                                                                   gt, valid)
            else:
                stack = tf.stack([coarse + residual[None] for residual in residuals], axis=1)  # [N, R, B, h, w, 2]
                stack = tf.reshape(stack, tf.concat([[-1], tf.shape(stack)[2:]], 0))  # earlier flow heads major
                fed_level(y, j + 1, path + (o,), _resize_stack(stack, sizes[flows[j + 2].level]))

    moments_level(trunk_out, 0, ())
    first = tf.stack([supernet.apply_layer(flows[0], trunk_out, o, None, h, w) for o in _options(flows[0].name)])
    fed_level(trunk_out, 0, (), _resize_stack(first, sizes[flows[1].level]))
    return {"input": trunk_out, "gt": gt, "valid": valid, "moments": moments, "fed": fed, "sums": sums}


def build_tree(sizes, masked=False, frame=None):
    """Trunk and heads for each input size (h, w) in `sizes` (the recalibration batches' and the
    validation batches' sizes may differ); all share the supernet's variables by name. `frame`:
    the size of the true flow at every input size, default each its own."""
    tree = {}
    for h, w in sorted(set(sizes)):
        trunk = build_trunk(h, w)
        trunk_shape = trunk[supernet.SPACE.trunk[-1].name]["fed"]["output"].shape.as_list()[1:]
        tree[(h, w)] = {"trunk": trunk, "heads": build_heads(h, w, trunk_shape, masked, frame)}
    return tree


# ----------------------------------------------------------------------------- what is shared

def node_key(layer, arch):
    """The computation a conv of `supernet.layer_table` belongs to: (layer, the choices on its path).
    Two subnets with equal keys compute the same output (and BN statistics) there. A ResBlock of a
    depth block depends on its parents only (depth is nested)."""
    space = supernet.SPACE
    name = layer.split("/")[0]
    choice = dict(zip(space.blocks, arch))
    deps = space.parents[name] if space.by_name[name].op in supernet.TRUNK_OPS else space.depends_on(name)
    return layer, tuple(choice[b] for b in deps)


def shared_macs(h, w, archs=None):
    """(MACs scoring `archs` (default: all) with shared computation, MACs scoring each alone),
    per image pair: each distinct node_key counted once against every subnet's own count."""
    archs = archs or [supernet.index_to_arch(i) for i in range(supernet.SPACE.num_archs)]
    nodes, alone = {}, 0
    for arch in archs:
        for layer, k, cin, cout, oh, ow, _ in supernet.layer_table(arch, h, w):
            macs = k * k * cin * cout * oh * ow
            nodes[node_key(layer, arch)] = macs
            alone += macs
    return sum(nodes.values()), alone


def trunk_path(prefix):
    """The trunk nodes a prefix of trunk choices runs through, in order: (stage, the choices its
    output depends on). ResBlock b of a depth block depends on the choices before it only (depth
    is nested), a fixed layer on the choices of the blocks before it."""
    space = supernet.SPACE
    choice = dict(zip(space.trunk_blocks, prefix))
    path = []
    for layer in space.trunk:
        parents = tuple(choice[b] for b in space.parents[layer.name])
        if layer.op == "depth":
            path += [(f"{layer.name}/rb{b}", parents) for b in range(1, layer.options[choice[layer.name]] + 1)]
        else:
            path.append((layer.name, parents))
    return path


def has_masks(val_batches):
    """Whether any validation batch has pixels that do not count (a validity mask with zeros)."""
    return any(not np.all(batches.batch_parts(b)[2]) for b in val_batches)


def _size(images):
    return tuple(int(v) for v in images.shape[1:3])


# ----------------------------------------------------------------------------- walking the tree

class TreeScorer:
    """Scores subnets one trunk prefix at a time on fixed recalibration and validation batches.

    Keeps the trunk activations of the current path (for every batch), so consecutive prefixes
    that share their first choices reuse them. Recalibration is scoring.score_subnet's: each BN
    node's statistics are the running average (supernet.recal_average) of its batch moments over
    the recalibration batches, computed in training mode from its parents' training-mode outputs.
    """

    def __init__(self, sess, tree, recal_batches, val_batches):
        self.sess, self.tree = sess, tree
        self.recal_images = [images for images, *_ in recal_batches]
        self.val = [batches.batch_parts(b) for b in val_batches]
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
        """The trunk's outputs for a prefix: (per recalibration batch in training mode, per validation batch)."""
        path = trunk_path(prefix)
        self.activations = {node: acts for node, acts in self.activations.items() if node in path}
        recal_in, val_in = self.recal_images, [images for images, _, _ in self.val]
        for node in path:
            if node not in self.activations:
                self.activations[node] = self._trunk_node(node[0], recal_in, val_in)
            recal_in, val_in = self.activations[node]
        return recal_in, val_in

    def score_prefix(self, prefix, heads):
        """Metrics of the subnets `prefix` + head index for each of `heads`: {head index: {"epe",
        "px1", "px3", "px5", "fl_all", "sample_epe" (each sample's EPE sum)}}. Only the head nodes
        they use run."""
        space = supernet.SPACE
        recal_trunk, val_trunk = self.trunk(prefix)
        choices = {head: head_choices(head) for head in heads}
        # Whole subtrees of the first feature head's choices: few distinct fetch sets, so TensorFlow
        # prepares few executors.
        first, *deeper = space.feature_heads
        paths = [(o, *rest) for o in sorted({c[first] for c in choices.values()})
                 for rest in itertools.product(*(_options(name) for name in deeper))]
        nodes = [(name, *path[:j + 1]) for path in paths for j, name in enumerate(space.feature_heads)]
        nodes = list(dict.fromkeys(nodes))
        groups = [(*path, r) for path in paths for r in _options(space.flow_heads[-1])]

        def moments_form(size):
            heads_graph = self.tree[size]["heads"]
            return heads_graph["input"], None, {n: heads_graph["moments"][n] for n in nodes}

        _, stats = self._recalibrate(moments_form, recal_trunk)
        totals = {}
        for (images, flows, valid), x in zip(self.val, val_trunk):
            graph = self.tree[_size(images)]["heads"]
            feed = {graph["input"]: x, graph["gt"]: flows}
            if graph["valid"] is not None:  # built only where some batch has pixels that do not count
                feed[graph["valid"]] = valid
            for node in nodes:
                feed.update(dict(zip(graph["fed"][node], stats[node])))
            sums = self.sess.run({g: graph["sums"][g] for g in groups}, feed)
            self.tick()
            for group, values in sums.items():
                metrics.add_sums(totals.setdefault(group, {}), values)
        return {head: _subnet_metrics(totals[_group(c)], _stack_position(c)) for head, c in choices.items()}


def _subnet_metrics(totals, position):
    """One subnet's metrics (metrics.NAMES and `sample_epe`) from its group's summed stack."""
    return dict(metrics.metrics_from_sums({k: float(v[position]) for k, v in totals.items() if k != "sample_epe"}),
                sample_epe=totals["sample_epe"][position])


def _group(choices):
    """The sums key of a subnet's head choices: its feature heads' choices and the last flow head's."""
    space = supernet.SPACE
    return tuple(choices[n] for n in space.feature_heads) + (choices[space.flow_heads[-1]],)


def _stack_position(choices):
    """A subnet's index in its group's stack: the choices of the flow heads but the last (mixed radix)."""
    position = 0
    for name in supernet.SPACE.flow_heads[:-1]:
        position = position * len(supernet.SPACE.by_name[name].options) + choices[name]
    return position


def score_archs(scorer, archs):
    """Metrics of each arch (tuples of ints) with shared computation: {arch: metrics}."""
    per_prefix = heads_per_prefix()
    indices = [supernet.arch_to_index(a) for a in archs]
    units = {}
    for index in indices:
        units.setdefault(index // per_prefix, []).append(index % per_prefix)
    results = {}
    for prefix, heads in sorted(units.items()):
        scored = scorer.score_prefix(prefix_choices(prefix), heads)
        results.update({prefix * per_prefix + head: m for head, m in scored.items()})
    return {supernet.index_to_arch(i): results[i] for i in indices}
