"""EdgeFlowNAS supernet: the search space, the arch codec, the TF1 graph and its analytic cost.

One graph, two forms. `arch` is either a 9-element int tensor (dynamic: every choice block is a
`tf.switch_case`, so only the chosen branch runs, forward and backward) or a tuple of 9 ints
(static: only the chosen layers are built). Both create the same variable names, so one checkpoint
serves both. Layers are small functions taking a scope name; shapes are in the comments for the
default 180x240 input.

    python supernet.py --self_test
    python supernet.py --shape_check --h 180 --w 240 --batch 2 --samples 5
    python supernet.py --info --arch 0,0,0,0,0,0,0,0,0
"""
import argparse
import sys

import numpy as np
import devices  # before tensorflow: quietens its start-up (see devices.py)
import tensorflow as tf

BLOCKS = ("EB0", "EB1", "DB0", "DB1", "H0Out", "H1", "H1Out", "H2", "H2Out")
NUM_OPTIONS = 3
NUM_ARCHS = NUM_OPTIONS ** len(BLOCKS)  # 19,683
KERNEL_SIZES = (3, 5, 7)  # option -> head kernel size; depth blocks: option -> option + 1 ResBlocks
FLOW_CHANNELS = 2
INPUT_CHANNELS = 6  # two RGB frames stacked
BN_EPSILON = 1e-3
VARIABLE_ROOT = "supernet"
BN_MODES = ("train", "recal", "eval")


class ArchError(ValueError):
    """A malformed arch code; the message names the bad field."""


# ----------------------------------------------------------------------------- arch codec

def validate_arch(arch):
    """Return `arch` as a tuple of 9 ints in 0..2, or raise ArchError naming the bad field."""
    arch = tuple(arch)
    if len(arch) != len(BLOCKS):
        raise ArchError(f"arch has {len(arch)} fields, expected {len(BLOCKS)} (one per block {','.join(BLOCKS)})")
    for i, value in enumerate(arch):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < NUM_OPTIONS:
            raise ArchError(f"arch field {i} ({BLOCKS[i]}) is {value!r}, expected 0, 1 or 2")
    return tuple(int(v) for v in arch)


def parse_arch(text):
    """Parse "0,1,2,0,1,2,0,1,2" into a validated tuple; ArchError names the bad field."""
    if not isinstance(text, str) or not text.strip():
        raise ArchError("arch code is empty, expected 9 comma-separated options like 0,1,2,0,1,2,0,1,2")
    fields = [f.strip() for f in text.split(",")]
    if len(fields) != len(BLOCKS):
        raise ArchError(f"arch code {text!r} has {len(fields)} fields, expected {len(BLOCKS)}")
    for i, field in enumerate(fields):
        if field not in ("0", "1", "2"):
            raise ArchError(f"arch code {text!r}: field {i} ({BLOCKS[i]}) is {field!r}, expected 0, 1 or 2")
    return tuple(int(f) for f in fields)


def format_arch(arch):
    """Format an arch tuple as its code string "0,1,2,..."."""
    return ",".join(str(v) for v in validate_arch(arch))


def arch_to_index(arch):
    """Index 0..19682 of an arch, block 0 the most significant base-3 digit."""
    index = 0
    for value in validate_arch(arch):
        index = index * NUM_OPTIONS + value
    return index


def index_to_arch(index):
    """Inverse of arch_to_index."""
    if not 0 <= index < NUM_ARCHS:
        raise ArchError(f"arch index {index} is outside 0..{NUM_ARCHS - 1}")
    digits = []
    for _ in BLOCKS:
        index, value = divmod(index, NUM_OPTIONS)
        digits.append(value)
    return tuple(reversed(digits))


def check_input_size(h, w):
    """Raise ValueError unless the input size is positive and divisible by 4."""
    for name, value in (("h", h), ("w", w)):
        if not isinstance(value, int) or value <= 0 or value % 4:
            raise ValueError(f"input size {name}={value!r} must be a positive multiple of 4")


# ----------------------------------------------------------------------------- analytic cost

def _conv_out(size, stride):
    """Output length of a 'SAME' conv."""
    return -(-size // stride)


def level_sizes(h, w):
    """(h, w) of the input and of levels 1/2, 1/4, 1/8, 1/16 as the strided convs produce them."""
    sizes = [(h, w)]
    for _ in range(4):
        sizes.append((_conv_out(sizes[-1][0], 2), _conv_out(sizes[-1][1], 2)))
    return sizes


def layer_table(arch, h, w):
    """Every conv of one subnet as (name, k, cin, cout, out_h, out_w, has_bn).

    Written from DESIGN.md's table independently of the graph code, so that counting the
    variables of a built graph checks both.
    """
    arch = validate_arch(arch)
    full, half, quarter, eighth, sixteenth = level_sizes(h, w)
    rows = [("E0", 7, INPUT_CHANNELS, 32, *half, True), ("E1", 5, 32, 64, *quarter, True)]

    def resblocks(stage, option, ch, size):
        for b in range(option + 1):
            rows.extend([(f"{stage}/rb{b + 1}/conv1", 3, ch, ch, *size, True),
                         (f"{stage}/rb{b + 1}/conv2", 3, ch, ch, *size, True)])

    resblocks("EB0", arch[0], 64, quarter)
    rows.append(("Down1", 3, 64, 128, *eighth, True))
    resblocks("EB1", arch[1], 128, eighth)
    rows.append(("Down2", 3, 128, 256, *sixteenth, True))
    resblocks("DB0", arch[2], 256, sixteenth)
    rows.append(("Up1", 3, 256, 128, *eighth, True))
    resblocks("DB1", arch[3], 128, eighth)
    rows.append(("Up2", 3, 128, 64, *quarter, True))
    k = [KERNEL_SIZES[o] for o in arch[4:]]
    rows.extend([("H0Out", k[0], 64, FLOW_CHANNELS, *quarter, False),
                 ("H1", k[1], 64, 32, *half, True),
                 ("H1Out", k[2], 32, FLOW_CHANNELS, *half, False),
                 ("H2", k[3], 32, 16, *full, True),
                 ("H2Out", k[4], 16, FLOW_CHANNELS, *full, False)])
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


def depth_block(x, scope, option, bn):
    """Choice of 1, 2 or 3 ResBlocks; nested, so Deep3 reuses the weights of Deep1 and Deep2."""
    def stack(depth):
        def run():
            y = x
            for b in range(depth):
                y = resblock(y, f"{scope}/rb{b + 1}", bn)
            return y
        return run
    return choose(option, [stack(d + 1) for d in range(NUM_OPTIONS)])


def kernel_block(x, scope, option, cout, bn=None):
    """Choice of a 3x3, 5x5 or 7x7 conv (each with its own weights), with BN+ReLU when `bn` is given."""
    def branch(k):
        def run():
            if bn is None:
                return conv(x, f"{scope}/k{k}/conv", k, cout)
            return conv_bn_relu(x, f"{scope}/k{k}", k, cout, 1, bn)
        return run
    return choose(option, [branch(k) for k in KERNEL_SIZES])


TRUNK = (("EB0", "Down1"), ("EB1", "Down2"), ("DB0", "Up1"), ("DB1", "Up2"))  # each depth block, then its transition
FEATURE_HEADS = {"H1": 32, "H2": 16}  # head -> channels; the flow heads (H0Out, H1Out, H2Out) output 2


def stem(images, bn):
    """E0 and E1, the layers every subnet shares. [B, 180, 240, 6] -> [B, 45, 60, 64]."""
    x = conv_bn_relu(images, "E0", 7, 32, 2, bn)                  # [B, 90, 120, 32]
    return conv_bn_relu(x, "E1", 5, 64, 2, bn)                    # [B, 45, 60, 64]


def transition(x, name, bn, h, w):
    """The layer after a depth block: Down1/Down2 halve the size (stride-2 conv), Up1/Up2 resize
    to the exact size of the matching encoder level and convolve (input size h x w fixes it)."""
    if name in ("Down1", "Down2"):
        return conv_bn_relu(x, name, 3, 2 * int(x.shape[-1]), 2, bn)  # [B, 23, 30, 128], [B, 12, 15, 256]
    level = level_sizes(h, w)[3 if name == "Up1" else 2]
    return conv_bn_relu(resize(x, level), name, 3, int(x.shape[-1]) // 2, 1, bn)  # [B, 23, 30, 128], [B, 45, 60, 64]


def feature_head(x, scope, option, bn, size):
    """H1 or H2: resize to the next scale `size`, then a kxk conv-BN-ReLU (k chosen by `option`)."""
    return kernel_block(resize(x, size), scope, option, FEATURE_HEADS[scope], bn)


def flow_head(x, scope, option):
    """H0Out, H1Out or H2Out: a kxk conv to the 2 flow channels (no BN, no ReLU)."""
    return kernel_block(x, scope, option, FLOW_CHANNELS)


def accumulate(coarse, residual):
    """Flow at the residual's scale: the coarser flow resized up plus the residual (flow stays in
    input-pixel units: it is never rescaled on resize)."""
    return resize(coarse, residual.shape[1:3]) + residual


def build_flows(images, arch, mode="train", recal_index=None):
    """The supernet forward pass for one arch.

    images: [B, H, W, 6] in [-1, 1], H and W static and divisible by 4.
    arch: tuple of 9 ints (static form) or an int32 tensor of shape [9] (dynamic form).
    Returns the accumulated flows [flow_1/4, flow_1/2, flow_1/1], each [B, h, w, 2] in
    input-pixel units: [B,45,60,2], [B,90,120,2], [B,180,240,2] at 180x240.
    """
    if mode not in BN_MODES:
        raise ValueError(f"BN mode {mode!r} is not one of {BN_MODES}")
    h, w = int(images.shape[1]), int(images.shape[2])
    check_input_size(h, w)
    if isinstance(arch, (tuple, list)):
        arch = validate_arch(arch)
    choice = [arch[i] for i in range(len(BLOCKS))]
    full, half = level_sizes(h, w)[:2]

    def bn(x, scope, zero_gamma=False):
        return batch_norm(x, scope, mode, recal_index, zero_gamma)

    with tf.name_scope("supernet"):
        x = stem(images, bn)                                          # [B, 45, 60, 64]
        for i, (block, after) in enumerate(TRUNK):
            x = transition(depth_block(x, block, choice[i], bn), after, bn, h, w)
        flow_4 = flow_head(x, "H0Out", choice[4])                     # [B, 45, 60, 2]
        x = feature_head(x, "H1", choice[5], bn, half)                # [B, 90, 120, 32]
        flow_2 = accumulate(flow_4, flow_head(x, "H1Out", choice[6]))  # [B, 90, 120, 2]
        x = feature_head(x, "H2", choice[7], bn, full)                # [B, 180, 240, 16]
        flow_1 = accumulate(flow_2, flow_head(x, "H2Out", choice[8]))  # [B, 180, 240, 2]
    return [flow_4, flow_2, flow_1]


def kernel_variables(variables):
    """The conv kernels among `variables` (what weight decay applies to)."""
    return [v for v in variables if v.op.name.endswith("/kernel")]


def graph_param_count(graph):
    """Number of trainable parameters held by a built graph."""
    return int(sum(np.prod(v.shape.as_list()) for v in graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES)))


def random_archs(count, seed):
    """`count` archs drawn uniformly with a seeded generator."""
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(0, NUM_OPTIONS, len(BLOCKS))) for _ in range(count)]


# ----------------------------------------------------------------------------- CLI checks

def self_test():
    """Round-trip every code and show that malformed codes are rejected; returns an exit code."""
    for index in range(NUM_ARCHS):
        arch = index_to_arch(index)
        if arch_to_index(parse_arch(format_arch(arch))) != index:
            print(f"FAIL: round trip of index {index} ({arch})")
            return 1
    print(f"round trip ok: all {NUM_ARCHS} codes (index -> arch -> code -> arch -> index)")
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
        arch = tf.compat.v1.placeholder(tf.int32, [len(BLOCKS)], "arch")
        flows = build_flows(images, arch, mode="train")
        init = tf.compat.v1.global_variables_initializer()
    expected = [(h // 4, w // 4), (h // 2, w // 2), (h, w)]
    rng = np.random.default_rng(seed)
    ok = True
    with tf.compat.v1.Session(graph=graph) as sess:
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--self_test", action="store_true", help="round-trip all codes, reject malformed ones")
    parser.add_argument("--shape_check", action="store_true", help="run sampled archs through the dynamic graph")
    parser.add_argument("--info", action="store_true", help="params and GMACs of --arch")
    parser.add_argument("--arch", default="0,0,0,0,0,0,0,0,0", help="arch code for --info")
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
    except ValueError as err:
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
