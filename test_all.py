"""EdgeFlowNAS test suite. Small inputs wherever the shape does not matter; every test compares
against an independent computation (numpy, a brute-force path, bytes written by hand)."""
import ast
import itertools
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import fair
import supernet

HERE = pathlib.Path(__file__).parent
LIBRARY_MODULES = ("supernet", "fair", "data_fc2", "ckpt")
ENTRY_POINTS = ("train", "evaluate", "bench")


# ----------------------------------------------------------------------------- helpers

def bilinear_resize_np(x, out_h, out_w):
    """Independent numpy bilinear resize with half-pixel centres (what tf.image.resize does)."""
    _, in_h, in_w, _ = x.shape

    def axis(out_n, in_n):
        src = np.maximum((np.arange(out_n) + 0.5) * in_n / out_n - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), in_n - 1)
        return lo, np.minimum(lo + 1, in_n - 1), src - lo

    y0, y1, fy = axis(out_h, in_h)
    x0, x1, fx = axis(out_w, in_w)
    fy, fx = fy[None, :, None, None], fx[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - fx) + x[:, y0][:, :, x1] * fx
    bottom = x[:, y1][:, :, x0] * (1 - fx) + x[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bottom * fy


def variables_by_name(graph):
    """{op name: variable} of a graph's global variables."""
    return {v.op.name: v for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)}


def set_variable(sess, variable, value):
    """Overwrite a variable's value in a session."""
    with variable.graph.as_default():
        sess.run(variable.assign(np.asarray(value, np.float32)))


# ----------------------------------------------------------------------------- arch codec

def test_every_code_round_trips():
    seen = set()
    for index in range(supernet.NUM_ARCHS):
        arch = supernet.index_to_arch(index)
        assert supernet.arch_to_index(supernet.parse_arch(supernet.format_arch(arch))) == index
        seen.add(arch)
    assert seen == set(itertools.product(range(3), repeat=9))


@pytest.mark.parametrize("code, words", [
    ("0,1", "2 fields"), ("0,1,3,0,0,0,0,0,0", "field 2 (DB0)"), ("a,b,c", "3 fields"),
    ("", "empty"), ("0,1,2,0,1,2,0,1,x", "field 8 (H2Out)"), ("0,1,2,0,1,2,0,1,-1", "field 8"),
])
def test_malformed_codes_are_rejected_naming_the_problem(code, words):
    with pytest.raises(supernet.ArchError, match=words.replace("(", r"\(").replace(")", r"\)")):
        supernet.parse_arch(code)


def test_validate_rejects_bools_floats_and_wrong_length():
    for bad in [(0,) * 8, (0,) * 8 + (True,), (0,) * 8 + (1.0,), (0,) * 8 + (3,)]:
        with pytest.raises(supernet.ArchError):
            supernet.validate_arch(bad)


# ----------------------------------------------------------------------------- analytic cost

def test_reference_sizes_match_a_hand_count():
    # By hand from DESIGN.md, all-0 at 180x240 (k*k*cin*cout kernels + 2*cout BN per conv):
    # E0 9408+64, E1 51200+128, EB0 2*(36864+128), Down1 73728+256, EB1 2*(147456+256),
    # Down2 294912+512, DB0 2*(589824+512), Up1 294912+256, DB1 2*(147456+256), Up2 73728+128,
    # H0Out 1152, H1 18432+64, H1Out 576, H2 4608+32, H2Out 288.
    assert supernet.count_params((0,) * 9) == 2_669_888
    # all-2 adds two ResBlocks per depth stage and 7x7 heads.
    extra_depth = 2 * (73_984 + 295_424 + 1_180_672 + 295_424)
    extra_heads = (49 - 9) * (64 * 2 + 64 * 32 + 32 * 2 + 32 * 16 + 16 * 2)
    assert supernet.count_params((2,) * 9) == 2_669_888 + extra_depth + extra_heads
    assert abs(supernet.count_macs((0,) * 9) / 1e9 - 2.0) < 0.05
    assert abs(supernet.count_macs((2,) * 9) / 1e9 - 5.5) < 0.05
    # E0 alone: 7*7*6*32 MACs at each of 90x120 output pixels.
    assert supernet.layer_table((0,) * 9, 180, 240)[0] == ("E0", 7, 6, 32, 90, 120, True)


@pytest.mark.parametrize("arch", [(0,) * 9, (2,) * 9, (0, 1, 2, 0, 1, 2, 0, 1, 2), (2, 0, 1, 1, 2, 0, 2, 1, 0)])
def test_built_static_graph_has_the_analytic_parameter_count(arch):
    graph = tf.Graph()
    with graph.as_default():
        supernet.build_flows(tf.compat.v1.placeholder(tf.float32, [1, 32, 48, 6]), arch, mode="eval")
    assert supernet.graph_param_count(graph) == supernet.count_params(arch, 32, 48)


def test_dynamic_graph_holds_every_option_once():
    graph = tf.Graph()
    with graph.as_default():
        supernet.build_flows(tf.compat.v1.placeholder(tf.float32, [1, 32, 48, 6]),
                             tf.compat.v1.placeholder(tf.int32, [9]), mode="train")
    names = variables_by_name(graph)

    def params(arch, heads):
        rows = supernet.layer_table(arch, 32, 48)
        return sum(k * k * ci * co + (2 * co if bn else 0) for name, k, ci, co, _, _, bn in rows if name.startswith("H") == heads)

    # The deepest body once (depth options are nested) plus every head option's own weights.
    expected = params((2,) * 9, False) + sum(params((o,) * 9, True) for o in range(3))
    assert supernet.graph_param_count(graph) == expected
    assert "supernet/H2Out/k5/conv/kernel" in names and "supernet/DB0/rb3/conv2/kernel" in names


def test_input_size_must_be_a_multiple_of_4():
    with pytest.raises(ValueError, match="h=30"):
        supernet.check_input_size(30, 40)


# ----------------------------------------------------------------------------- graph behaviour

def _dynamic_and_static(arch, mode):
    """One graph holding the dynamic form and the static form of `arch` on the same input."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(1)
        images = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 6])
        arch_in = tf.compat.v1.placeholder(tf.int32, [9])
        dynamic = supernet.build_flows(images, arch_in, mode=mode)
        static = supernet.build_flows(images, arch, mode=mode)
        init = tf.compat.v1.global_variables_initializer()
    return graph, images, arch_in, dynamic, static, init


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dynamic_and_static_forms_agree(mode):
    arch = (2, 0, 1, 1, 2, 0, 2, 1, 0)
    graph, images, arch_in, dynamic, static, init = _dynamic_and_static(arch, mode)
    n_vars = len(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 48, 6)).astype(np.float32)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        if mode == "eval":  # non-trivial running statistics so the eval path is really exercised
            rng = np.random.default_rng(1)
            for name, v in variables_by_name(graph).items():
                if name.endswith("moving_mean"):
                    set_variable(sess, v, rng.normal(0, 0.1, v.shape.as_list()))
                elif name.endswith("moving_variance"):
                    set_variable(sess, v, rng.uniform(0.5, 1.5, v.shape.as_list()))
        dyn, sta = sess.run([dynamic, static], {images: x, arch_in: arch})
    # The static form created no variable of its own: both forms share every name.
    assert n_vars == len(variables_by_name(graph))
    for d, s in zip(dyn, sta):
        assert d.shape == s.shape
        np.testing.assert_allclose(d, s, rtol=1e-5, atol=1e-5)
        assert np.abs(d).max() > 1e-3


def test_only_chosen_options_receive_gradient():
    arch = (0, 1, 2, 0, 1, 2, 0, 1, 2)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 6])
        arch_in = tf.compat.v1.placeholder(tf.int32, [9])
        flows = supernet.build_flows(images, arch_in, mode="train")
        loss = sum(tf.reduce_mean(tf.abs(f - 1.0)) for f in flows)
        variables = graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES)
        grads = tf.gradients(loss, variables)
        init = tf.compat.v1.global_variables_initializer()
    fetch = {v.op.name: g for v, g in zip(variables, grads) if g is not None}
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        values = sess.run(fetch, {images: np.random.default_rng(0).uniform(-1, 1, (2, 32, 48, 6)), arch_in: arch})
    norm = {name: float(np.abs(values[name]).sum()) if name in values else 0.0 for name in (v.op.name for v in variables)}
    chosen = {"EB0": {1}, "EB1": {1, 2}, "DB0": {1, 2, 3}, "DB1": {1}}
    for stage, blocks in chosen.items():
        for b in (1, 2, 3):
            g = norm[f"supernet/{stage}/rb{b}/conv1/kernel"]
            assert (g > 0) == (b in blocks), (stage, b, g)
    for block, option in zip(supernet.BLOCKS[4:], arch[4:]):
        for o, k in enumerate(supernet.KERNEL_SIZES):
            g = norm[f"supernet/{block}/k{k}/conv/kernel"]
            assert (g > 0) == (o == option), (block, k, g)
    assert norm["supernet/E0/conv/kernel"] > 0


def test_outputs_are_accumulated_across_scales():
    arch = (1, 0, 2, 1, 0, 2, 1, 0, 2)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 6])
        flows = supernet.build_flows(images, arch, mode="train")
        init = tf.compat.v1.global_variables_initializer()
    names = variables_by_name(graph)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 48, 6)).astype(np.float32)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        f4, f2, f1 = sess.run(flows, {images: x})
        assert f4.shape == (2, 8, 12, 2) and f2.shape == (2, 16, 24, 2) and f1.shape == (2, 32, 48, 2)
        # With both residual heads zeroed the finer outputs are exactly the upsampled coarse flow,
        # in the same pixel units (never rescaled).
        for head, k in (("H1Out", supernet.KERNEL_SIZES[arch[6]]), ("H2Out", supernet.KERNEL_SIZES[arch[8]])):
            kernel = names[f"supernet/{head}/k{k}/conv/kernel"]
            set_variable(sess, kernel, np.zeros(kernel.shape.as_list()))
        z4, z2, z1 = sess.run(flows, {images: x})
    np.testing.assert_allclose(z4, f4, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z2, bilinear_resize_np(f4, 16, 24), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z1, bilinear_resize_np(bilinear_resize_np(f4, 16, 24), 32, 48), rtol=1e-4, atol=1e-5)
    # With the residuals on, the full-resolution output differs from the upsampled coarse flow.
    assert np.abs(f1 - bilinear_resize_np(f2, 32, 48)).max() > 1e-4


# ----------------------------------------------------------------------------- fairness

def test_every_fair_cycle_is_three_permutations_over_many_seeds():
    for seed in range(40):
        for step in range(25):
            paths = fair.fair_cycle(seed, step)
            assert len(paths) == 3
            for block in range(9):
                assert sorted(p[block] for p in paths) == [0, 1, 2]


def test_cycles_depend_on_seed_and_step_only():
    assert fair.fair_cycle(42, 17) == fair.fair_cycle(42, 17)
    assert len({fair.fair_cycle(42, s) for s in range(50)}) > 45
    assert [fair.fair_cycle(1, s) for s in range(10)] != [fair.fair_cycle(2, s) for s in range(10)]


def test_counts_are_equal_and_gap_zero_after_whole_steps():
    counts = fair.counts_for_steps(42, 0, 300)
    assert all(n == 300 for options in counts.values() for n in options.values())
    assert fair.fairness_gap(counts) == 0
    # An independent brute-force count over the raw cycles.
    brute = np.zeros((9, 3), int)
    for s in range(300):
        for arch in fair.fair_cycle(42, s):
            brute[np.arange(9), arch] += 1
    assert (brute == 300).all()
    # Half a cycle is unfair: the gap is non-zero.
    assert fair.fairness_gap(fair.add_counts(fair.empty_counts(), fair.fair_cycle(42, 0)[:1])) == 1


def test_counts_resume_where_they_left_off():
    first = fair.counts_for_steps(7, 0, 13)
    assert fair.counts_for_steps(7, 13, 20, first) == fair.counts_for_steps(7, 0, 33)


@pytest.mark.parametrize("size, seed", [(12, 42), (3, 0), (24, 5)])
def test_eval_pool_covers_every_option_equally(size, seed):
    pool = fair.build_eval_pool(size, seed)
    assert pool[:3] == [(0,) * 9, (1,) * 9, (2,) * 9]
    assert len(set(pool)) == size
    for c in range(size // 3):
        cycle = pool[3 * c: 3 * c + 3]
        assert all(sorted(p[b] for p in cycle) == [0, 1, 2] for b in range(9))
    coverage = fair.pool_coverage(pool)
    assert coverage["ok"], coverage["problems"]
    assert fair.build_eval_pool(size, seed) == pool


def test_eval_pool_coverage_check_catches_problems():
    pool = fair.build_eval_pool(12, 42)
    assert not fair.pool_coverage(pool[:-1] + [pool[0]])["ok"]
    assert not fair.pool_coverage(pool[:11])["ok"]
    with pytest.raises(ValueError, match="multiple of 3"):
        fair.build_eval_pool(10, 42)


def test_fair_cli_checks(capsys):
    assert fair.main(["--cycles", "30", "--seed", "3", "--check"]) == 0
    out = capsys.readouterr().out
    assert "fairness gap: 0" in out and out.count(" 30 ") + out.count("30\n") >= 9
    with pytest.raises(SystemExit):
        fair.main(["--pool", "--size", "10"])


def test_supernet_self_test_cli(capsys):
    assert supernet.main(["--self_test"]) == 0
    out = capsys.readouterr().out
    assert "all 19683 codes" in out and out.count("rejected") == 4


# ----------------------------------------------------------------------------- code rules

def _imports(module):
    tree = ast.parse((HERE / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", [m for m in LIBRARY_MODULES if (HERE / f"{m}.py").exists()])
def test_library_modules_import_no_entry_point(module):
    assert not _imports(module) & set(ENTRY_POINTS)


@pytest.mark.parametrize("module", [m for m in LIBRARY_MODULES + ENTRY_POINTS if (HERE / f"{m}.py").exists()])
def test_every_public_function_has_a_docstring(module):
    tree = ast.parse((HERE / f"{module}.py").read_text())
    assert ast.get_docstring(tree), f"{module} has no module docstring"
    missing = [n.name for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_") and not ast.get_docstring(n)
               and n.col_offset == 0]
    assert not missing, f"{module}: no docstring on {missing}"
