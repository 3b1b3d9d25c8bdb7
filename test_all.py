"""EdgeFlowNAS test suite. Small inputs wherever the shape does not matter; every test compares
against an independent computation (numpy, a brute-force path, bytes written by hand)."""
import ast
import itertools
import os
import pathlib
import struct

import numpy as np
import pytest
import tensorflow as tf

import data_fc2
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


# ----------------------------------------------------------------------------- data (data_fc2.py)

H, W = 32, 48  # tiny synthetic FC2 images
CROP = (24, 32)


@pytest.fixture(scope="module")
def fc2_tree(tmp_path_factory):
    """A tiny FC2 tree written once by write_synthetic_fc2 (10 samples: 8 train, 2 val)."""
    root = str(tmp_path_factory.mktemp("fc2"))
    counts = data_fc2.write_synthetic_fc2(root, 10, seed=3, h=H, w=W, val_fraction=0.2)
    assert counts == {"train": 8, "val": 2}
    return root


def _copy_tree(src, dst):
    """Copy an FC2 tree so a test can damage it without touching the shared fixture."""
    for dirpath, _, files in os.walk(src):
        target = os.path.join(dst, os.path.relpath(dirpath, src))
        os.makedirs(target, exist_ok=True)
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                content = f.read()
            with open(os.path.join(target, name), "wb") as f:
                f.write(content)
    return str(dst)


def _decode_png(path):
    with open(path, "rb") as f:
        return tf.io.decode_png(f.read(), channels=3).numpy()


def _hand_flo_bytes(width, height, values, tag=b"PIEH"):
    return tag + struct.pack("<ii", width, height) + struct.pack(f"<{len(values)}f", *values)


# ----------------------------------------------------------------------------- .flo

def test_flo_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 30, (5, 7, 2)).astype(np.float32)
    flow[0, 0] = [-0.0, 1e9]  # negative zero and Middlebury's "unknown" marker survive too
    flow[1, 1] = [np.inf, np.nan]
    path = str(tmp_path / "x.flo")
    data_fc2.write_flo(path, flow)
    back = data_fc2.read_flo(path)
    assert back.dtype == np.float32 and back.shape == (5, 7, 2)
    assert np.array_equal(back.view(np.uint32), flow.view(np.uint32))
    assert os.path.getsize(path) == 12 + 5 * 7 * 2 * 4


def test_read_flo_of_hand_written_bytes(tmp_path):
    # width 3, height 2; u, v interleaved, row-major: pixel (row r, col c) = (10r + c, -(10r + c))
    values = [v for r in range(2) for c in range(3) for v in (10 * r + c, -(10 * r + c))]
    path = tmp_path / "hand.flo"
    path.write_bytes(_hand_flo_bytes(3, 2, values))
    flow = data_fc2.read_flo(str(path))
    assert flow.shape == (2, 3, 2)
    assert flow[1, 2].tolist() == [12.0, -12.0]
    assert flow[0, 1].tolist() == [1.0, -1.0]


@pytest.mark.parametrize("content, words", [
    (_hand_flo_bytes(2, 2, [0.0] * 8, tag=b"PIEX"), "wrong .flo tag"),
    (_hand_flo_bytes(0, 2, []), "impossible .flo size"),
    (_hand_flo_bytes(2, -1, []), "impossible .flo size"),
    (_hand_flo_bytes(100000, 1, []), "impossible .flo size"),
    (b"PIEH\x02\x00", "short .flo file"),
    (_hand_flo_bytes(2, 2, [0.0] * 7), "short .flo file"),
    (_hand_flo_bytes(2, 2, [0.0] * 9), "bytes after"),
])
def test_read_flo_malformed_names_the_file(tmp_path, content, words):
    path = tmp_path / "bad_sample.flo"
    path.write_bytes(content)
    with pytest.raises(data_fc2.DataError, match=words) as info:
        data_fc2.read_flo(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_flo_missing_file_and_write_bad_shape_name_the_file(tmp_path):
    with pytest.raises(data_fc2.DataError, match="nothere.flo"):
        data_fc2.read_flo(str(tmp_path / "nothere.flo"))
    with pytest.raises(data_fc2.DataError, match="out.flo"):
        data_fc2.write_flo(str(tmp_path / "out.flo"), np.zeros((4, 4, 3), np.float32))


# ----------------------------------------------------------------- lists, folders, checks

def test_lists_and_folders_give_the_same_samples(fc2_tree):
    assert data_fc2.detect_layout(fc2_tree) == "lists"
    for split, n in (("train", 8), ("val", 2)):
        lists = data_fc2.list_samples(fc2_tree, split, "lists")
        folders = data_fc2.list_samples(fc2_tree, split, "folders")
        assert len(lists) == n
        assert sorted(lists) == sorted(folders)
        img0, img1, flow = lists[0]
        assert img0.endswith("-img_0.png") and img1.endswith("-img_1.png")
        assert flow.endswith("-flow_01.flo")
        assert os.path.dirname(img0).endswith(os.path.join("FlyingChairs2", split))
    assert data_fc2.check_dataset(fc2_tree, "lists") == data_fc2.check_dataset(fc2_tree, "folders") \
        == {"train": 8, "val": 2}


def test_list_layout_with_absolute_paths(fc2_tree, tmp_path):
    lists_only = tmp_path / "lists_only"  # holds the list files, the images live elsewhere
    lists_only.mkdir()
    lines = open(os.path.join(fc2_tree, "FC2_dirnames.txt")).read().splitlines()
    assert not os.path.isabs(lines[0])
    absolute = "".join(os.path.join(fc2_tree, line) + "\n" for line in lines)
    (lists_only / "FC2_dirnames.txt").write_text(absolute)
    for name in ("FC2_train.txt", "FC2_test.txt"):
        (lists_only / name).write_text(open(os.path.join(fc2_tree, name)).read())
    base = str(lists_only)
    assert data_fc2.list_samples(base, "val", "lists") == data_fc2.list_samples(fc2_tree, "val", "lists")
    assert data_fc2.check_dataset(base, "auto") == {"train": 8, "val": 2}


@pytest.mark.parametrize("index_text, words", [("3\n10\n", "index 10 out of range"),
                                               ("-1\n", "index -1 out of range"),
                                               ("two\n", "expected an integer")])
def test_split_index_errors_name_the_list_file(fc2_tree, tmp_path, index_text, words):
    base = _copy_tree(fc2_tree, tmp_path / "copy")
    with open(os.path.join(base, "FC2_test.txt"), "w") as f:
        f.write(index_text)
    with pytest.raises(data_fc2.DataError, match=words) as info:
        data_fc2.list_samples(base, "val", "lists")
    assert "FC2_test.txt" in str(info.value)


def test_check_dataset_names_a_deleted_file(fc2_tree, tmp_path):
    base = _copy_tree(fc2_tree, tmp_path / "copy")
    victim = data_fc2.list_samples(base, "train", "lists")[4][2]
    os.remove(victim)
    for layout in ("lists", "folders"):
        with pytest.raises(data_fc2.DataError) as info:
            data_fc2.check_dataset(base, layout)
        message = str(info.value)
        assert message.startswith("1 of 8 samples in split 'train' are incomplete")
        assert victim in message


def test_check_dataset_rejects_an_empty_split_and_missing_base(fc2_tree, tmp_path):
    base = _copy_tree(fc2_tree, tmp_path / "copy")
    open(os.path.join(base, "FC2_test.txt"), "w").close()
    with pytest.raises(data_fc2.DataError, match="split 'val' .* has no samples"):
        data_fc2.check_dataset(base, "lists")
    with pytest.raises(data_fc2.DataError, match="not a directory"):
        data_fc2.check_dataset(str(tmp_path / "absent"), "auto")
    with pytest.raises(data_fc2.DataError, match="neither"):
        data_fc2.detect_layout(str(tmp_path))


# ------------------------------------------------------------------------------ synthetic

def _bilinear(image, x, y):
    """Sample image [h, w, C] at float positions with bilinear weights (border-clamped)."""
    h, w = image.shape[:2]
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    tx, ty = (x - x0)[..., None], (y - y0)[..., None]
    img = image.astype(np.float64)
    top = (1 - tx) * img[y0, x0] + tx * img[y0, x0 + 1]
    bottom = (1 - tx) * img[y0 + 1, x0] + tx * img[y0 + 1, x0 + 1]
    return (1 - ty) * top + ty * bottom


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_flow_warps_img1_back_to_img0(seed):
    h, w = 96, 128
    scene = data_fc2.render_synthetic_scene(np.random.default_rng(seed), h, w)
    img0, img1, flow = scene["img0"], scene["img1"], scene["flow"]
    layers0, layers1 = scene["layers0"], scene["layers1"]
    assert len(np.unique(layers0)) >= 4  # background plus several visible objects
    ys, xs = np.mgrid[0:h, 0:w]
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    # not occluded: the target lies in the frame and all four bilinear neighbours in img1 show
    # the same layer as the pixel in img0
    visible = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    for dy in (0, 1):
        for dx in (0, 1):
            visible &= layers1[y0 + dy, x0 + dx] == layers0
    assert visible.mean() > 0.6
    warped_error = np.abs(_bilinear(img1, x, y) - img0).mean(axis=-1)[visible].mean()
    zero_error = np.abs(img1.astype(np.float64) - img0).mean(axis=-1)[visible].mean()
    # Bound 1.0 grey level: uint8 rounding of both frames gives a mean |difference| of about
    # 1/3; bilinear interpolation of the smooth texture adds little (plane waves with
    # amplitude <= 18 and wavelength >= 12 px have |f''| <= 18 (2 pi / 12)^2 ~ 5 per wave,
    # so the per-pixel interpolation error, <= |f''|/8 per axis, averages well below 1).
    # Measured: 0.30-0.37. A wrong flow (sign, axis order, frame) gives errors of several levels.
    assert warped_error < 1.0
    assert zero_error > 3.0 and zero_error > 5 * warped_error


def test_synthetic_is_seeded_and_reproducible():
    a = data_fc2.make_synthetic_arrays(3, 24, 32, seed=7)
    b = data_fc2.make_synthetic_arrays(3, 24, 32, seed=7)
    c = data_fc2.make_synthetic_arrays(3, 24, 32, seed=8)
    assert a["img0"].shape == (3, 24, 32, 3) and a["img0"].dtype == np.uint8
    assert a["flow"].shape == (3, 24, 32, 2) and a["flow"].dtype == np.float32
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["img0"], c["img0"])
    assert a["img0"].std() > 10 and np.abs(a["flow"]).max() > 0.5  # texture and motion, not constants


def test_written_fc2_tree_matches_the_synthetic_arrays(fc2_tree):
    arrays = data_fc2.make_synthetic_arrays(10, H, W, seed=3)
    samples = [s for split in data_fc2.SPLITS for s in data_fc2.list_samples(fc2_tree, split, "lists")]
    for img0, img1, flow in samples:
        i = int(os.path.basename(img0)[:7])
        assert np.array_equal(_decode_png(img0), arrays["img0"][i])
        assert np.array_equal(_decode_png(img1), arrays["img1"][i])
        assert np.array_equal(data_fc2.read_flo(flow), arrays["flow"][i])
    with pytest.raises(data_fc2.DataError, match="already exists"):
        data_fc2.write_synthetic_fc2(fc2_tree, 4, h=H, w=W)


# ------------------------------------------------------------------------------ pipeline

def test_normalise_maps_uint8_to_unit_range():
    x = np.arange(256, dtype=np.uint8)
    y = data_fc2.normalise(x)
    assert y.dtype == np.float32 and y[0] == -1.0 and y[-1] == 1.0 and np.all(np.diff(y) > 0)
    assert np.array_equal(data_fc2.normalise(tf.constant(x)).numpy(), y)
    with pytest.raises(data_fc2.DataError, match="uint8"):
        data_fc2.normalise(x.astype(np.float32))


def _centre(array, crop_hw):
    top = (array.shape[0] - crop_hw[0]) // 2
    left = (array.shape[1] - crop_hw[1]) // 2
    return array[top:top + crop_hw[0], left:left + crop_hw[1]]


def test_eval_pipeline_is_centre_crop_unclipped_and_deterministic(fc2_tree):
    samples = data_fc2.list_samples(fc2_tree, "train", "lists")[:5]
    dataset = data_fc2.make_dataset(samples, 2, CROP, train=False, max_flow=0.1, seed=0)
    batches = list(dataset)
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]  # last partial batch kept
    images = np.concatenate([b[0].numpy() for b in batches])
    flows = np.concatenate([b[1].numpy() for b in batches])
    assert images.shape == (5, 24, 32, 6) and flows.shape == (5, 24, 32, 2)
    assert images.min() >= -1.0 and images.max() <= 1.0
    for i, (img0, img1, flow) in enumerate(samples):
        assert np.array_equal(flows[i], _centre(data_fc2.read_flo(flow), CROP))  # not clipped to 0.1
        expected = np.concatenate([_centre(_decode_png(p), CROP) for p in (img0, img1)], axis=-1)
        assert np.array_equal(images[i], expected.astype(np.float32) / 127.5 - 1)
    again = np.concatenate([b[1].numpy() for b in dataset])
    assert np.array_equal(again, flows)


def test_eval_pipeline_reads_hand_written_flo(tmp_path):
    values = [float(v) for v in range(3 * 4 * 2)]  # height 3, width 4
    (tmp_path / "0-flow_01.flo").write_bytes(_hand_flo_bytes(4, 3, values))
    image = tf.io.encode_png(np.full((3, 4, 3), 255, np.uint8)).numpy()
    for name in ("0-img_0.png", "0-img_1.png"):
        (tmp_path / name).write_bytes(image)
    sample = tuple(str(tmp_path / n) for n in ("0-img_0.png", "0-img_1.png", "0-flow_01.flo"))
    dataset = data_fc2.make_dataset([sample], 1, (3, 4), train=False, max_flow=1, seed=0)
    images, flow = next(iter(dataset))
    assert np.array_equal(flow.numpy()[0], np.array(values, np.float32).reshape(3, 4, 2))
    assert np.all(images.numpy() == 1.0)


def _find_window(big, small):
    """Top-left corners where `small` equals a window of `big`."""
    h, w = small.shape[:2]
    return [(t, l) for t in range(big.shape[0] - h + 1) for l in range(big.shape[1] - w + 1)
            if np.array_equal(big[t:t + h, l:l + w], small)]


def test_train_pipeline_random_crop_clip_and_repeat(fc2_tree):
    samples = data_fc2.list_samples(fc2_tree, "train", "lists")
    max_flow = 0.75
    first = list(data_fc2.make_dataset(samples, 3, CROP, train=True, max_flow=max_flow, seed=5).take(4))
    second = list(data_fc2.make_dataset(samples, 3, CROP, train=True, max_flow=max_flow, seed=5).take(4))
    assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0]) for a, b in zip(first, second))
    # 4 batches of 3 from 8 samples: the stream repeats and every batch is full
    assert all(b[0].shape == (3, 24, 32, 6) and b[1].shape == (3, 24, 32, 2) for b in first)
    flows = np.concatenate([b[1].numpy() for b in first])
    images = np.concatenate([b[0].numpy() for b in first])
    assert np.abs(flows).max() == pytest.approx(max_flow)
    assert images.min() >= -1.0 and images.max() <= 1.0
    # every crop is a window of some sample (its image and clipped flow at the same corner)
    decoded = [(_decode_png(img0), np.clip(data_fc2.read_flo(flow), -max_flow, max_flow))
               for img0, _, flow in samples]
    corners = set()
    for image, flow in zip(images, flows):
        img0 = np.rint((image[..., :3] + 1) * 127.5).astype(np.uint8)
        matches = [(t, l) for img, fl in decoded for t, l in _find_window(img, img0)
                   if np.array_equal(fl[t:t + CROP[0], l:l + CROP[1]], flow)]
        assert matches
        corners.update(matches)
    assert len(corners) > 1  # random, not always the centre


def test_pipeline_from_synthetic_arrays_and_crop_errors(fc2_tree):
    arrays = data_fc2.make_synthetic_arrays(3, 24, 32, seed=1)
    dataset = data_fc2.make_dataset(arrays, 3, (24, 32), train=False, max_flow=1, seed=0)
    images, flow = next(iter(dataset))
    assert np.array_equal(flow.numpy(), arrays["flow"])
    assert np.array_equal(images.numpy()[..., 3:], data_fc2.normalise(arrays["img1"]))
    with pytest.raises(data_fc2.DataError, match="smaller than the 25x32 crop"):
        data_fc2.make_dataset(arrays, 1, (25, 32), train=True, max_flow=1, seed=0)
    samples = data_fc2.list_samples(fc2_tree, "val", "lists")
    with pytest.raises(data_fc2.DataError, match="flow_01.flo: 32x48 sample is smaller than the 24x64"):
        data_fc2.make_dataset(samples, 1, (24, 64), train=False, max_flow=1, seed=0)


def test_pipeline_names_a_malformed_flo_at_run_time(fc2_tree, tmp_path):
    base = _copy_tree(fc2_tree, tmp_path / "copy")
    samples = data_fc2.list_samples(base, "train", "lists")[:2]
    with open(samples[1][2], "r+b") as f:
        f.write(b"XXXX")
    with pytest.raises(tf.errors.InvalidArgumentError, match="wrong .flo tag") as info:
        list(data_fc2.make_dataset(samples, 1, CROP, train=False, max_flow=1, seed=0))
    assert samples[1][2] in str(info.value)


@pytest.mark.parametrize("source_kind", ["files", "arrays"])
def test_pipeline_in_tf1_graph_mode(fc2_tree, source_kind):
    if source_kind == "files":
        source = data_fc2.list_samples(fc2_tree, "train", "lists")
    else:
        source = data_fc2.make_synthetic_arrays(3, H, W, seed=2)
    with tf.Graph().as_default():
        dataset = data_fc2.make_dataset(source, 2, CROP, train=True, max_flow=5.0, seed=1)
        images, flow = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        assert images.shape.as_list() == [2, 24, 32, 6] and flow.shape.as_list() == [2, 24, 32, 2]
        with tf.compat.v1.Session() as session:
            image_values, flow_values = session.run([images, flow])
    assert image_values.min() >= -1.0 and image_values.max() <= 1.0
    assert np.abs(flow_values).max() <= 5.0 and np.abs(flow_values).max() > 0


# ------------------------------------------------------------------------------ open_data

def _cfg(**overrides):
    cfg = dict(base_path="", data_layout="auto", synthetic=False, synthetic_train_size=3,
               synthetic_val_size=2, input_h=24, input_w=32, seed=11)
    cfg.update(overrides)
    return cfg


def test_open_data_synthetic_only_when_asked_or_unconfigured(fc2_tree):
    data = data_fc2.open_data(_cfg())
    assert data["data_source"] == "synthetic" and "no base_path configured" in data["reason"]
    assert data["counts"] == {"train": 3, "val": 2}
    assert data["train"]["img0"].shape == (3, 24, 32, 3) and data["val"]["flow"].shape == (2, 24, 32, 2)
    assert not np.array_equal(data["train"]["img0"][:2], data["val"]["img0"])  # different seeds
    forced = data_fc2.open_data(_cfg(synthetic=True, base_path=fc2_tree))
    assert forced["data_source"] == "synthetic" and "--synthetic requested" in forced["reason"]
    real = data_fc2.open_data(_cfg(base_path=fc2_tree))
    assert real["data_source"] == "fc2" and real["layout"] == "lists"
    assert real["counts"] == {"train": 8, "val": 2} and len(real["val"]) == 2


def test_open_data_never_falls_back_when_base_path_is_broken(fc2_tree, tmp_path):
    with pytest.raises(data_fc2.DataError, match="not a directory"):
        data_fc2.open_data(_cfg(base_path=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(data_fc2.DataError, match="neither"):
        data_fc2.open_data(_cfg(base_path=str(tmp_path / "empty")))
    base = _copy_tree(fc2_tree, tmp_path / "copy")
    victim = data_fc2.list_samples(base, "val", "folders")[0][0]
    os.remove(victim)
    with pytest.raises(data_fc2.DataError, match="split 'val' are incomplete") as info:
        data_fc2.open_data(_cfg(base_path=base, data_layout="folders"))
    assert victim in str(info.value)
    with pytest.raises(data_fc2.DataError, match="data_layout"):
        data_fc2.open_data(_cfg(base_path=fc2_tree, data_layout="csv"))


# ------------------------------------------------------------------------------------ CLI

def test_cli_make_then_check_then_delete(tmp_path, capsys):
    root = str(tmp_path / "mini")
    assert data_fc2.main(["--make_synthetic_fc2", root, "--num", "5", "--h", "16", "--w", "24"]) == 0
    for name in ("FC2_dirnames.txt", "FC2_train.txt", "FC2_test.txt",
                 "FlyingChairs2/train", "FlyingChairs2/val"):
        assert os.path.exists(os.path.join(root, name))
    capsys.readouterr()
    assert data_fc2.main(["--check", "--base_path", root]) == 0
    out = capsys.readouterr().out
    assert "lists" in out and "folders" in out and out.count("train=4 val=1") == 2
    victim = data_fc2.list_samples(root, "val", "lists")[0][2]
    os.remove(victim)
    assert data_fc2.main(["--check", "--base_path", root]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and victim in err and err.count("\n") == 1


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
