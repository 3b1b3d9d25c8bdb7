"""EdgeFlowNAS supernet: the search space table, the arch codec, the TF1 graph and its analytic cost.

The search space is written once, as the table LAYERS below: every fixed layer and choice block,
what it reads, its output channels and scale, and for a choice block its options (ResBlocks per
option for a depth block, the kernel per option for a head). Everything else reads it through
SPACE: the arch codec, the graph, the cost counts, the eval pool (fair.py), the search tree
(search_tree.py), the latency and memory tables (edge_tables.py) and the pictures. Which blocks'
choices a layer's output depends on (its parents) follows from what each layer reads. The
table's version string is recorded with every checkpoint and result; another version is refused.

One graph, two forms. `arch` is either an int tensor with one element per block (dynamic: every
choice block is a `tf.switch_case`, so only the chosen branch runs, forward and backward) or a
tuple of ints (static: only the chosen layers are built). Both create the same variable names, so
one checkpoint serves both. The fair step's paths are a third way to build it (train_graph.py):
each block's options built once, statically, and routed to the paths that chose them, with the
same variables again. Layers are small functions taking a scope name; shapes are in the comments
for the default 180x240 input.

    python supernet.py --self_test
    python supernet.py --shape_check --h 180 --w 240 --batch 2 --samples 5
    python supernet.py --info --arch 0,0,0,0,0,0,0,0,0
"""
import dataclasses
import hashlib
import json
import math
import re
import sys

import numpy as np
import tensorflow_quiet
from tensorflow_quiet import tf

from errors import ArchError, ArgumentParser

FLOW_CHANNELS = 2
INPUT_CHANNELS = 6  # two RGB frames stacked
BN_EPSILON = 1e-3
VARIABLE_ROOT = "supernet"
BN_MODES = ("train", "recal", "eval")
INPUT = "images"  # what the first layer reads


@dataclasses.dataclass(frozen=True)
class Layer:
    """One row of the search space table.

    op: "conv" (conv-BN-ReLU, stride 2 where the scale halves), "up" (bilinear resize to the
    scale, 3x3 conv-BN-ReLU), "depth" (a choice of ResBlock counts), "feature" (resize to the
    scale, then a choice of kxk conv-BN-ReLU), "flow" (a choice of kxk conv to the 2 flow
    channels: the coarsest is the flow, each finer one a residual added to the coarser flow
    resized). level: the output scale, 0 = H x W, 1 = H/2, ... 4 = H/16. options: a choice
    block's options, ResBlocks per option (depth) or the kernel per option (feature, flow).
    """

    name: str
    op: str
    input: str
    channels: int
    level: int
    kernel: int = 3
    options: tuple = ()


LAYERS = (
    Layer("E0", "conv", INPUT, 32, level=1, kernel=7),          # [B, 90, 120, 32]
    Layer("E1", "conv", "E0", 64, level=2, kernel=5),            # [B, 45, 60, 64]
    Layer("EB0", "depth", "E1", 64, level=2, options=(1, 2, 3)),
    Layer("Down1", "conv", "EB0", 128, level=3),                 # [B, 23, 30, 128]
    Layer("EB1", "depth", "Down1", 128, level=3, options=(1, 2, 3)),
    Layer("Down2", "conv", "EB1", 256, level=4),                 # [B, 12, 15, 256]
    Layer("DB0", "depth", "Down2", 256, level=4, options=(1, 2, 3)),
    Layer("Up1", "up", "DB0", 128, level=3),                     # [B, 23, 30, 128]
    Layer("DB1", "depth", "Up1", 128, level=3, options=(1, 2, 3)),
    Layer("Up2", "up", "DB1", 64, level=2),                      # [B, 45, 60, 64]
    Layer("H0Out", "flow", "Up2", FLOW_CHANNELS, level=2, options=(3, 5, 7)),    # flow [B, 45, 60, 2]
    Layer("H1", "feature", "Up2", 32, level=1, options=(3, 5, 7)),               # [B, 90, 120, 32]
    Layer("H1Out", "flow", "H1", FLOW_CHANNELS, level=1, options=(3, 5, 7)),     # residual [B, 90, 120, 2]
    Layer("H2", "feature", "H1", 16, level=0, options=(3, 5, 7)),                # [B, 180, 240, 16]
    Layer("H2Out", "flow", "H2", FLOW_CHANNELS, level=0, options=(3, 5, 7)),     # residual [B, 180, 240, 2]
)
TRUNK_OPS = ("conv", "up", "depth")
HEAD_OPS = ("feature", "flow")


class Space:
    """A search space read from a layer table: its blocks, the codec's radices, every layer's
    parents (the blocks whose choices its input depends on), the trunk/head split the search tree
    uses, and the version string derived from the table.

    The family the graph and the search tree build: a trunk (a chain of fixed layers and depth
    blocks) followed by heads, a chain of feature heads each with one flow head reading it, plus
    one flow head reading the trunk's output. A table outside that family is refused here.
    """

    def __init__(self, layers):
        self.layers = tuple(layers)
        self.by_name = {layer.name: layer for layer in self.layers}
        self.blocks = tuple(layer.name for layer in self.layers if layer.options)
        self.num_options = tuple(len(self.by_name[b].options) for b in self.blocks)
        self.num_archs = math.prod(self.num_options)
        self.trunk = tuple(layer for layer in self.layers if layer.op in TRUNK_OPS)
        self.heads = tuple(layer for layer in self.layers if layer.op in HEAD_OPS)
        self._check_family()
        self.trunk_blocks = tuple(layer.name for layer in self.trunk if layer.options)
        self.head_blocks = tuple(layer.name for layer in self.heads)
        self.feature_heads = tuple(layer.name for layer in self.heads if layer.op == "feature")
        self.flow_heads = tuple(layer.name for layer in self.heads if layer.op == "flow")
        self.parents = {}
        for layer in self.layers:
            read = self.by_name.get(layer.input)
            self.parents[layer.name] = () if read is None else self.depends_on(read.name)
        self.version = f"{len(self.blocks)}blocks-" + hashlib.sha256(
            json.dumps([dataclasses.astuple(layer) for layer in self.layers]).encode()).hexdigest()[:12]

    def _check_family(self):
        """Refuse a table the graph and the search tree cannot build (see the class docstring)."""
        names = [layer.name for layer in self.layers]
        problems = []
        if len(set(names)) != len(names):
            problems.append("layer names repeat")
        if self.layers[:len(self.trunk)] != self.trunk or not self.trunk or not self.heads:
            problems.append("the trunk layers must come first, then the heads")
        for i, layer in enumerate(self.layers):
            if (layer.input != INPUT) if i == 0 else (layer.input not in names[:i]):
                problems.append(f"{layer.name} reads {layer.input}, not the input or an earlier layer")
            if layer.op in TRUNK_OPS and i and layer.input != names[i - 1]:
                problems.append(f"trunk layer {layer.name} must read the layer before it")
            choice_block = layer.op in ("depth",) + HEAD_OPS
            if bool(layer.options) != choice_block or len(set(layer.options)) < len(layer.options):
                problems.append(f"{layer.name}: a {layer.op} layer needs distinct options iff it is a choice block")
        features = [layer.name for layer in self.heads if layer.op == "feature"]
        flows = [layer for layer in self.heads if layer.op == "flow"]
        readers = [self.trunk[-1].name] + features
        if [layer.input for layer in flows] != readers or [self.by_name[f].input for f in features] != readers[:-1]:
            problems.append("heads must be a chain of feature heads with one flow head reading the trunk and each")
        if problems:
            raise ArchError(f"search space table: {problems[0]}")

    def depends_on(self, name):
        """The blocks whose choices decide layer `name`'s output: its parents and, for a choice block, itself."""
        return self.parents[name] + ((name,) if self.by_name[name].options else ())

    def legacy_signature(self):
        """How checkpoints made before the version string described this space (blocks, options per
        block, kernel sizes), or None where that description cannot express it."""
        kernels = {layer.options for layer in self.heads}
        depths = {layer.options for layer in self.layers if layer.op == "depth"}
        if len(set(self.num_options)) != 1 or len(kernels) != 1:
            return None
        if depths != {tuple(range(1, self.num_options[0] + 1))}:
            return None
        return {"blocks": list(self.blocks), "num_options": self.num_options[0], "kernel_sizes": list(kernels.pop())}


SPACE = Space(LAYERS)


# ----------------------------------------------------------------------------- arch codec

def validate_arch(arch):
    """Return `arch` as a tuple of ints, one per block, each in range; else ArchError naming the field."""
    arch = tuple(arch)
    blocks = SPACE.blocks
    if len(arch) != len(blocks):
        raise ArchError(f"arch has {len(arch)} fields, expected {len(blocks)} (one per block {','.join(blocks)})")
    for i, (value, count) in enumerate(zip(arch, SPACE.num_options)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < count:
            raise ArchError(f"arch field {i} ({blocks[i]}) is {value!r}, expected 0..{count - 1}")
    return tuple(int(v) for v in arch)


def parse_arch(text):
    """Parse "0,1,2,0,1,2,0,1,2" into a validated tuple; ArchError names the bad field."""
    blocks = SPACE.blocks
    if not isinstance(text, str) or not text.strip():
        what = "empty" if isinstance(text, str) else f"{text!r}, not a string"
        raise ArchError(f"arch code is {what}, expected {len(blocks)} comma-separated options, one per block "
                        f"{','.join(blocks)}")
    fields = [f.strip() for f in text.split(",")]
    if len(fields) != len(blocks):
        raise ArchError(f"arch code {text!r} has {len(fields)} fields, expected {len(blocks)}")
    for i, (field, count) in enumerate(zip(fields, SPACE.num_options)):
        if field not in [str(o) for o in range(count)]:
            raise ArchError(f"arch code {text!r}: field {i} ({blocks[i]}) is {field!r}, expected 0..{count - 1}")
    return tuple(int(f) for f in fields)


def format_arch(arch):
    """Format an arch tuple as its code string "0,1,2,..."."""
    return ",".join(str(v) for v in validate_arch(arch))


def arch_to_index(arch):
    """Index 0 .. num_archs-1 of an arch, block 0 the most significant digit (mixed radix)."""
    index = 0
    for value, count in zip(validate_arch(arch), SPACE.num_options):
        index = index * count + value
    return index


def index_to_arch(index):
    """Inverse of arch_to_index."""
    if not 0 <= index < SPACE.num_archs:
        raise ArchError(f"arch index {index} is outside 0..{SPACE.num_archs - 1}")
    digits = []
    for count in reversed(SPACE.num_options):
        index, value = divmod(index, count)
        digits.append(value)
    return tuple(reversed(digits))


def uniform_arch(option):
    """The arch choosing `option` in every block (all-0 is the smallest subnet, all-<last> the largest)."""
    return tuple(min(option, count - 1) for count in SPACE.num_options)


MIN_INPUT_SIDE = 16  # the coarsest level is 1/16 of the input
MAX_INPUT_SIDE = 4096  # above every frame of FC2, Sintel and KITTI; beyond it a typo, not a network to build


def check_input_size(h, w):
    """Raise ArchError unless the input size is a multiple of 4 from MIN_INPUT_SIDE to MAX_INPUT_SIDE a side."""
    for name, value in (("h", h), ("w", w)):
        if not isinstance(value, int) or not MIN_INPUT_SIDE <= value <= MAX_INPUT_SIDE or value % 4:
            raise ArchError(f"input size {name}={value!r} must be a multiple of 4 from {MIN_INPUT_SIDE} to "
                            f"{MAX_INPUT_SIDE} (the network's coarsest level is 1/16 of it)")


def structure(arch, size):
    """What a network's compiled figures depend on besides its weights: the search space's version,
    the arch and the input size (h, w)."""
    return {"space": SPACE.version, "arch": format_arch(arch), "size": list(size)}


def parse_size(text):
    """"HxW" -> (h, w), both positive multiples of 4; ArchError naming the text otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text.lower(), re.ASCII)  # int() alone takes 3_2 and +32
    if not match:
        raise ArchError(f"input size {text!r} is not HxW (e.g. 144x192)")
    h, w = int(match[1]), int(match[2])
    check_input_size(h, w)
    return h, w


def check_space_version(version, where):
    """ArchError unless `version` is this table's: what an arch code means depends on it."""
    if version != SPACE.version:
        raise ArchError(f"{where} was made with search space {version}, this code has {SPACE.version}: "
                        "its arch codes mean other networks")


# ----------------------------------------------------------------------------- analytic cost

def _conv_out(size, stride):
    """Output length of a 'SAME' conv."""
    return -(-size // stride)


def level_sizes(h, w):
    """(h, w) of the input and of every coarser level (1/2, 1/4, ...) as the strided convs produce them."""
    sizes = [(h, w)]
    for _ in range(max(layer.level for layer in SPACE.layers)):
        sizes.append((_conv_out(sizes[-1][0], 2), _conv_out(sizes[-1][1], 2)))
    return sizes


def _input_channels(layer):
    return INPUT_CHANNELS if layer.input == INPUT else SPACE.by_name[layer.input].channels


def _input_level(layer):
    return 0 if layer.input == INPUT else SPACE.by_name[layer.input].level


def layer_table(arch, h, w):
    """Every conv of one subnet as (name, k, cin, cout, out_h, out_w, has_bn), read from the table."""
    choice = dict(zip(SPACE.blocks, validate_arch(arch)))
    sizes = level_sizes(h, w)
    rows = []
    for layer in SPACE.layers:
        size, cin, cout = sizes[layer.level], _input_channels(layer), layer.channels
        if layer.op == "depth":
            for b in range(layer.options[choice[layer.name]]):
                rows += [(f"{layer.name}/rb{b + 1}/conv{i}", 3, cout, cout, *size, True) for i in (1, 2)]
        elif layer.options:
            rows.append((layer.name, layer.options[choice[layer.name]], cin, cout, *size, layer.op == "feature"))
        else:
            rows.append((layer.name, layer.kernel, cin, cout, *size, True))
    return rows


def count_params(arch, h=180, w=240):
    """Trainable parameters of a subnet: conv kernels (no bias) plus BN gamma and beta."""
    return sum(k * k * cin * cout + (2 * cout if bn else 0) for _, k, cin, cout, _, _, bn in layer_table(arch, h, w))


def count_macs(arch, h=180, w=240):
    """Multiply-accumulates of one forward pass of a subnet on one image pair (convs only)."""
    return sum(k * k * cin * cout * oh * ow for _, k, cin, cout, oh, ow, _ in layer_table(arch, h, w))


# ----------------------------------------------------------------------------- TF1 layers

def _variable(name, shape, initializer, trainable=True):
    """Get or create `supernet/<name>` in the outermost graph.

    `init_scope` lifts creation out of the `switch_case` branch functions, so every variable
    lives in the main graph whatever branch first asks for it; AUTO_REUSE shares it between the
    three training paths, the recalibration pass and the evaluation pass.
    """
    with tf.compat.v1.init_scope(), tf.compat.v1.variable_scope(VARIABLE_ROOT, reuse=tf.compat.v1.AUTO_REUSE):
        return tf.compat.v1.get_variable(name, shape, tf.float32, initializer=initializer, trainable=trainable)


def conv(x, scope, k, cout, stride=1):
    """'SAME' conv, no bias, He init. [B, H, W, cin] -> [B, H/stride, W/stride, cout]."""
    kernel = _variable(f"{scope}/kernel", [k, k, int(x.shape[-1]), cout],
                       tf.compat.v1.initializers.variance_scaling(2.0, "fan_in", "truncated_normal"))
    return tf.nn.conv2d(x, kernel, stride, "SAME", name=scope.replace("/", "_"))


def batch_norm(x, scope, mode, recal_index=None, zero_gamma=False):
    """Batch norm with learned gamma/beta (gamma starts at 0 with `zero_gamma`, else at 1).

    mode "train": batch statistics, running statistics untouched (meaningless in a supernet).
    mode "recal": batch statistics, and the running statistics become the exact average of the
        batch statistics seen so far: batch k (0-based, fed as `recal_index`) moves them by 1/(k+1).
    mode "eval": the running statistics.
    """
    channels = int(x.shape[-1])
    moving_mean = _variable(f"{scope}/moving_mean", [channels], tf.compat.v1.initializers.zeros(), trainable=False)
    moving_var = _variable(f"{scope}/moving_variance", [channels], tf.compat.v1.initializers.ones(), trainable=False)
    if mode == "eval":
        return normalize(x, scope, moving_mean, moving_var, zero_gamma)
    if mode == "train":  # one op forward and one backward: a third of the graph to build, and a faster step
        gamma, beta = scale_and_offset(scope, channels, zero_gamma)
        return tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=BN_EPSILON, is_training=True)[0]
    mean, var = batch_moments(x)  # "recal"
    index = tf.cast(recal_index, tf.float32)
    updates = [moving_mean.assign(recal_average(moving_mean, mean, index)),
               moving_var.assign(recal_average(moving_var, var, index))]
    with tf.control_dependencies(updates):
        x = tf.identity(x)
    return normalize(x, scope, mean, var, zero_gamma)


def recal_average(running, batch_stat, index):
    """The exact average over recalibration batches, kept as a running value: batch 0 (0-based
    `index`) sets it, batch k moves it by 1/(k+1). Works on tensors and on float32 numpy arrays."""
    return running + (batch_stat - running) * (1.0 / (index + 1.0))


def batch_moments(x):
    """Per-channel mean and biased variance over batch and space: what training-mode BN uses."""
    return tf.nn.moments(x, [0, 1, 2])


def normalize(x, scope, mean, var, zero_gamma=False):
    """Normalise `x` with the given per-channel statistics and the BN's learned gamma/beta.

    The one BN formula: batch_norm uses it with batch or running statistics, and search.py with
    statistics it recalibrated itself for one node of the shared subnet tree.
    """
    gamma, beta = scale_and_offset(scope, int(x.shape[-1]), zero_gamma)
    return tf.nn.batch_normalization(x, mean, var, beta, gamma, BN_EPSILON)


def scale_and_offset(scope, channels, zero_gamma=False):
    """The BN's learned gamma (starting at 0 with `zero_gamma`, else at 1) and beta (at 0)."""
    gamma = _variable(f"{scope}/gamma", [channels], (tf.compat.v1.initializers.zeros() if zero_gamma
                                                     else tf.compat.v1.initializers.ones()))
    beta = _variable(f"{scope}/beta", [channels], tf.compat.v1.initializers.zeros())
    return gamma, beta


def conv_bn_relu(x, scope, k, cout, stride, bn):
    """conv -> BN -> ReLU."""
    return tf.nn.relu(bn(conv(x, f"{scope}/conv", k, cout, stride), f"{scope}/bn"))


def resblock(x, scope, bn):
    """conv3x3-BN-ReLU-conv3x3-BN, add identity, ReLU. Shape unchanged.

    The second BN's gamma starts at 0, so every ResBlock starts as the identity and the depth
    options of a block start out computing the same function: without it the three paths of a
    fair step disagree from the first step and the supernet barely learns for hundreds of steps.
    """
    y = tf.nn.relu(bn(conv(x, f"{scope}/conv1", 3, int(x.shape[-1])), f"{scope}/bn1"))
    y = bn(conv(y, f"{scope}/conv2", 3, int(x.shape[-1])), f"{scope}/bn2", zero_gamma=True)
    return tf.nn.relu(x + y)


def resize(x, size):
    """Bilinear resize to an exact (h, w)."""
    return tf.image.resize(x, size, method="bilinear")


def choose(option, branches):
    """Run branch `option`: a Python int builds only that branch (static form), a scalar tensor
    switches between all of them at run time, running only the chosen one (dynamic form)."""
    if isinstance(option, int):
        return branches[option]()
    return tf.switch_case(option, branches)


def depth_block(x, scope, option, depths, bn):
    """A choice of ResBlock counts (`depths`, one per option); nested, so a deeper option reuses
    the weights of the shallower ones."""
    def stack(depth):
        def run():
            y = x
            for b in range(depth):
                y = resblock(y, f"{scope}/rb{b + 1}", bn)
            return y
        return run
    return choose(option, [stack(d) for d in depths])


def kernel_block(x, scope, option, kernels, cout, bn=None):
    """A choice of kxk convs (`kernels`, one per option, each with its own weights), with BN+ReLU
    when `bn` is given."""
    def branch(k):
        def run():
            if bn is None:
                return conv(x, f"{scope}/k{k}/conv", k, cout)
            return conv_bn_relu(x, f"{scope}/k{k}", k, cout, 1, bn)
        return run
    return choose(option, [branch(k) for k in kernels])


def apply_layer(layer, x, option, bn, h, w):
    """One row of the table on its input `x` at input size h x w: option is the block's choice
    (an int, or a scalar tensor in the dynamic form; None for a fixed layer)."""
    size = level_sizes(h, w)[layer.level]
    if layer.op == "conv":
        stride = 2 if layer.level > _input_level(layer) else 1
        return conv_bn_relu(x, layer.name, layer.kernel, layer.channels, stride, bn)
    if layer.op == "up":
        return conv_bn_relu(resize(x, size), layer.name, layer.kernel, layer.channels, 1, bn)
    if layer.op == "depth":
        return depth_block(x, layer.name, option, layer.options, bn)
    if layer.op == "feature":
        return kernel_block(resize(x, size), layer.name, option, layer.options, layer.channels, bn)
    return kernel_block(x, layer.name, option, layer.options, layer.channels)  # flow: no BN, no ReLU


def accumulate(coarse, residual):
    """Flow at the residual's scale: the coarser flow resized up plus the residual (flow stays in
    input-pixel units: it is never rescaled on resize)."""
    return resize(coarse, residual.shape[1:3]) + residual


def build_flows(images, arch, mode="train", recal_index=None):
    """The supernet forward pass for one arch.

    images: [B, H, W, 6] in [-1, 1], H and W static and divisible by 4.
    arch: tuple of ints, one per block (static form), or an int32 tensor of that length (dynamic).
    Returns the accumulated flows, coarsest first ([flow_1/4, flow_1/2, flow_1/1]: [B,45,60,2],
    [B,90,120,2], [B,180,240,2] at 180x240), each in input-pixel units.
    """
    if mode not in BN_MODES:
        raise ArchError(f"BN mode {mode!r} is not one of {BN_MODES}")
    h, w = int(images.shape[1]), int(images.shape[2])
    check_input_size(h, w)
    if isinstance(arch, (tuple, list)):
        arch = validate_arch(arch)
    choice = {block: arch[i] for i, block in enumerate(SPACE.blocks)}

    def bn(x, scope, zero_gamma=False):
        return batch_norm(x, scope, mode, recal_index, zero_gamma)

    outputs, flows = {INPUT: images}, []
    with tf.name_scope("supernet"):
        for layer in SPACE.layers:
            y = apply_layer(layer, outputs[layer.input], choice.get(layer.name), bn, h, w)
            if layer.op == "flow":
                flows.append(accumulate(flows[-1], y) if flows else y)
            else:
                outputs[layer.name] = y
    return flows


def kernel_variables(variables):
    """The conv kernels among `variables` (what weight decay applies to). By `name`, which a
    mirrored variable (distribute.py) keeps in every replica, where its `op` is the replica's copy."""
    return [v for v in variables if v.name.rpartition(":")[0].endswith("/kernel")]


def graph_param_count(graph):
    """Number of trainable parameters held by a built graph."""
    variables = graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES)
    return int(sum(np.prod(v.shape.as_list()) for v in variables))


def random_archs(count, seed):
    """`count` archs drawn uniformly with a seeded generator."""
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, n)) for n in SPACE.num_options) for _ in range(count)]


# ----------------------------------------------------------------------------- CLI checks

def self_test():
    """Round-trip every code and show that malformed codes are rejected; returns an exit code."""
    for index in range(SPACE.num_archs):
        arch = index_to_arch(index)
        if arch_to_index(parse_arch(format_arch(arch))) != index:
            print(f"FAIL: round trip of index {index} ({arch})")
            return 1
    print(f"search space {SPACE.version}: blocks {','.join(SPACE.blocks)}, options {SPACE.num_options}")
    print(f"round trip ok: all {SPACE.num_archs} codes (index -> arch -> code -> arch -> index)")
    failures = 0
    for bad in ("0,1", "0,1,3,0,0,0,0,0,0", "a,b,c", ""):
        try:
            parse_arch(bad)
            print(f"FAIL: {bad!r} was accepted")
            failures += 1
        except ArchError as err:
            print(f"rejected {bad!r}: {err}")
    return 1 if failures else 0


def shape_check(h, w, batch, samples, seed=0):
    """Build the dynamic graph once and run `samples` archs through it; print their output shapes."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [batch, h, w, INPUT_CHANNELS], "images")
        arch = tf.compat.v1.placeholder(tf.int32, [len(SPACE.blocks)], "arch")
        flows = build_flows(images, arch, mode="train")
        init = tf.compat.v1.global_variables_initializer()
    expected = [level_sizes(h, w)[SPACE.by_name[name].level] for name in SPACE.flow_heads]
    rng = np.random.default_rng(seed)
    ok = True
    with tf.compat.v1.Session(graph=graph, config=tensorflow_quiet.session_config()) as sess:
        sess.run(init)
        for a in random_archs(samples, seed):
            out = sess.run(flows, {images: rng.uniform(-1, 1, images.shape.as_list()), arch: a})
            shapes = [o.shape for o in out]
            good = [s == (batch, eh, ew, FLOW_CHANNELS) for s, (eh, ew) in zip(shapes, expected)]
            ok &= all(good)
            print(f"arch {format_arch(a)}: " + "  ".join(f"{s[1]}x{s[2]}x{s[3]}" for s in shapes)
                  + ("" if all(good) else "  MISMATCH"))
    print("shape check " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


def info(arch, h, w):
    """Print analytic params/GMACs and the parameter count of the built static graph."""
    analytic = count_params(arch, h, w)
    graph = tf.Graph()
    with graph.as_default():
        build_flows(tf.compat.v1.placeholder(tf.float32, [1, h, w, INPUT_CHANNELS]), arch, mode="eval")
    built = graph_param_count(graph)
    print(f"arch {format_arch(arch)} at {h}x{w}: params {analytic:,} ({analytic / 1e6:.2f} M), "
          f"{count_macs(arch, h, w) / 1e9:.3f} GMAC per image pair")
    print(f"static graph trainable parameters: {built:,} ({'equal' if built == analytic else 'DIFFERENT'})")
    return 0 if built == analytic else 1


def main(argv=None):
    """CLI: --self_test, --shape_check, --info."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--self_test", action="store_true", help="round-trip all codes, reject malformed ones")
    parser.add_argument("--shape_check", action="store_true", help="run sampled archs through the dynamic graph")
    parser.add_argument("--info", action="store_true", help="params and GMACs of --arch")
    parser.add_argument("--arch", default=format_arch(uniform_arch(0)), help="arch code for --info")
    parser.add_argument("--h", type=int, default=180, help="input height (multiple of 4)")
    parser.add_argument("--w", type=int, default=240, help="input width (multiple of 4)")
    parser.add_argument("--batch", type=int, default=2, help="batch size for --shape_check")
    parser.add_argument("--samples", type=int, default=5, help="archs to run for --shape_check")
    args = parser.parse_args(argv)
    if not (args.self_test or args.shape_check or args.info):
        parser.error("choose --self_test, --shape_check or --info")
    try:
        check_input_size(args.h, args.w)
        arch = parse_arch(args.arch)
    except ArchError as err:
        parser.error(str(err))
    status = 0
    if args.self_test:
        status |= self_test()
    if args.shape_check:
        status |= shape_check(args.h, args.w, args.batch, args.samples)
    if args.info:
        status |= info(arch, args.h, args.w)
    return status


if __name__ == "__main__":
    sys.exit(main())
