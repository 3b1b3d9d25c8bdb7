"""EdgeFlowNAS test suite. Small inputs wherever the shape does not matter; every test compares
against an independent computation (numpy, a brute-force path, bytes written by hand).

Contents. One section per file, in the order of README.md's files table (the files every command uses,
then each command followed by its libraries), each headed by a line `# ==== N. file.py`; the
cross-cutting classes come last. A new test class goes in the section of the file it tests; helpers
shared by several sections are in section 0.

 0. shared helpers and fixtures
 1. tensorflow_quiet.py: the one door to TensorFlow
      TestTensorflowQuiet       a Python without TensorFlow told in one line; start-up lines held back at levels 2, 3
 2. atomic_files.py: files written whole or not at all
      TestAtomicFiles           a folder swap leaves one whole folder
 3. devices.py: the device report, GPU readiness, the paths of a fair step on several devices
      TestGpuInstall            make venv picks the CUDA build where nvidia-smi lists a GPU; make tensorboard
      TestDeviceReport          the device line: CPU threads, a GPU TensorFlow cannot use, --devices checked
      TestFairStepOnDevices     the three paths of a fair step on three devices update the weights as on one
 4. supernet.py: the search space, the arch codec, the TF1 graph, params and MACs
      TestSupernetArchCodec     arch codes and HxW sizes: round trip, refusals naming the field, --self_test
      TestSupernetCost          params and MACs against a hand count and the built graphs
      TestSupernetGraph         dynamic and static forms agree; only chosen options run and learn; outputs accumulate
 5. fair.py: the strict-fairness sampler, fairness counts and gap, the eval pool
      TestFairSampler           fair cycles are permutations; counts, gap, resume; the eval pool's coverage; CLI
 6. ckpt.py: best/last checkpoints with their meta, one writer per folder
      TestCkpt                  a SIGKILL mid-save leaves a loadable checkpoint; the lock names its holder; sizes
 7. synthetic.py: synthetic FlyingChairs-style pairs with exactly known motion
      TestSynthetic             the flow warps img1 back to img0; the study's affine scene; seeded
 8. flowio.py: .flo, PNG frames and KITTI 16-bit flow PNGs
      TestFlowioFlo             .flo round trip, hand-written bytes, malformed files named
      TestFlowioPngAndKitti     KITTI 16-bit flow and valid bit by hand; a damaged PNG named
 9. data_fc2.py: FC2 lists and folders, the dataset check, the synthetic fallback
      TestDataFc2Layouts        lists and folders give the same samples; list errors name the file; layout said
      TestDataFc2Check          the up-front check: shared samples, grey or cut files; the CLI; the synthetic tree
      TestDataFc2OpenData       open_data: synthetic only when asked or unconfigured, never as a fallback
10. fc2_pipeline.py: the tf.data input pipeline: decoding, crops, normalisation, data order, batching
      TestFc2PipelineCrops      normalise, centre and random crops, clipping, hand-written .flo, TF1 mode
      TestFc2PipelineOrder      training batches read the samples batch_samples names; the one tf.data builder
11. data_sintel_kitti.py: MPI-Sintel and KITTI 2015 at full frame
      TestSintelKitti           Sintel pairs, KITTI batches grouped by size, padding that leaves the metrics
12. metrics.py: EPE, px1/px3/px5, Fl-all, the zero-flow baseline, the paired SE
      TestMetrics               metrics of hand-built predictions, masks, the paired SE, the resize floor
13. scoring.py: BN recalibration and scoring of one subnet
      TestScoring               recalibrated BN statistics are batch averages; order-free scores; accumulated flow
14. train.py: training flags, config resolution, resume
      TestTrainResume           resume refuses a damaged run in one line, changing nothing; a killed run resumes
      TestTrainRefusesBadData   a damaged sample met in training is named; a failed fresh run leaves no folder
15. training.py: a training run's state
      TestTrainingState         best and patience by min_delta; the time left counts the evaluations to come
16. train_graph.py: the loss, the optimizer update, the fused fair step
      TestTrainGraph            the fair step applies the mean of three path gradients; cosine rate; multiscale loss
      TestDistillation          the term by hand, no gradient into the teacher, counts exact, nothing built when off
17. run_files.py: what a run writes
      TestRunFiles              a run writes every artifact; the history trimmed to the checkpoint
18. distribute.py: data-parallel training
      TestDataParallel          TF_CONFIG checks, the shards of a batch, two workers: mean-gradient step, kill, resume
19. evaluate.py: a checkpoint scored on FC2, Sintel or KITTI
      TestEvaluate              the result JSON; Sintel and KITTI full frames against numpy; bad dataset files named
20. runs.py: a trained run as scoring commands see it
      TestRunsPool              pool coverage is claimed only for the run's own pool
21. flowviz.py: the Middlebury flow colours and the flow panels
      TestFlowviz               the colour wheel against its defining colours; the TensorBoard panel of the best arch
22. search.py: many subnets scored with shared computation, in durable shards; fronts and budgets
      TestSearchCommand         recalibration folders, FPS from a latency table, bad input, standalone runs refused
      TestSearchShardsAndResume shards merge to the single-process bytes; a killed search resumes; parts checked
23. search_tree.py: the subnet tree: each shared layer output computed once
      TestSearchTree            every subnet scores as alone, in the space of any table; trunk paths
24. search_parts.py: a search in durable units and shards
      TestSearchParts           damaged unit tables and relabelled rows refused; a search made before a new key
25. pareto.py: the table of scored subnets, Pareto fronts
      TestPareto                the front against brute force
26. noise_choice.py: the one choice rule: the fastest or cheapest member within Z paired SE of the lowest
      TestNoiseChoice           the rule against brute force, both rules, ties, the noise covering the front, settings
      TestChoiceInSearch        a search budget names the choice and the lowest EPE, under either rule
27. refine.py: the top candidates fine-tuned from the supernet's weights and rescored
      TestRefine                candidates, config rules, report vs numpy, kill and rerun, the start, the score
28. export.py: one subnet to TFLite FP32/INT8 and the NPU compiler
      TestExportCommand         export.py writes models, report and agreeing flows, at any size; bad input one line
29. convert.py: one subnet to TFLite: static graph, FP32/INT8
      TestConvert               the static graph holds exactly the subnet; FP32 matches TensorFlow; INT8 full integer
30. compiler.py: the edge compiler behind one door (Vela), board targets, the compile cache
      TestCompilerVela          Vela's summary and operator counts parsed; Vela missing; an ini error in one line
      TestCompilerTargets       board targets load and every fault is named; bounds; a vela.ini not UTF-8
      TestCompileCache          a model compiled once, races, killed and failed compiles, outputs named after the model
31. edge_tables.py: the NPU latency table, each block beside its neighbour
      TestEdgeTables            blocks charged their ops; the table predicts compiles; its check; H2 beside H2Out
32. deploy.py: fit a board: the best (arch, input size) in INT8 within its budgets
      TestDeployCommand         settings checked; over one deployment: it fits the board and hands firmware
                                what it needs; killed or failed, the last is kept; its choice and the lowest EPE
      TestDeployOneWriter       a second deployment refused before any compile
      TestDeploySummary         the printed summary: zero-flow warning, what each EPE is over, flash's margin
      TestDeployRefine          --refine checked; the refined choice is exported from its child's weights, reported
33. deployment.py: the steps: sizes, scores at every size, the board's front, INT8, the choice
      TestDeploymentSteps       sizes; INT8 written whole; compiled figures replace the table; one search per size
      TestDeploymentRefineSummary  refined members reported lowest refined first, their paired SEs against numpy
34. firmware.py: what a port needs
      TestFirmware              the C array holds the bytes, aligned
35. rank.py: subnets trained alone against the supernet's order; the margin of two runs
      TestRankStudy             rank.py --train on a tiny supernet: inheriting, report, seeds, margin, refusals
      TestRankCommand           --compare, the second seeds' plan, scoring progress, flags out of range
      TestRankBounds            --train and --bn_recal_batches beyond the space or data refused before any folder
36. ranking.py: rank statistics, the noise floor, standalone runs' checks and scores
      TestRankingStatistics     tau and rho with ties, the bootstrap, the noise floor, the seed ceiling, the draw
      TestRankingSearchChoice   the search's choice against a random pick; the study's time; run files checked
37. stopping.py: the stopping criterion of runs trained alone
      TestStopping              the criterion by hand, the runs still falling, the tau range against every order
38. parallel.py: child processes a few at a time, each pinned to its cores
      TestParallel              cores dealt to slots, time left, GPUs, TensorFlow's quiet, failures and interrupts
39. rank_bench.py: the ranking benchmark rankbench/
      TestRankBench             the plan and its rule, the fingerprint, the report by hand, rows refused, chunks
40. bench_methods.py: remedies for the supernet's ranking against the bench's rows
      TestBenchMethods          the methods table by hand; a tiny supernet and its refined archs against rows
41. cross-cutting: bad input, hostile input, one writer, code and import rules, flag help, the command line
      TestBadInput              bad config, flags, checkpoints and datasets: a one-line error
      TestHostileInput          damaged parts, lists, tables, configs, reports: named, nothing merged or half-written
      TestOneWriter             run names stay inside output_dir; a second writer is refused; no stale lock
      TestCodeRules             no command imported, docstrings, file and line lengths, defaults once, session config
      TestImportRules           no import cycle; commands never import commands; one door to TensorFlow
      TestFlagHelp              every flag of every command says what it does
      TestLibraryParameters     no library function takes the argparse namespace
      TestCommandLine           --help and refused flags before TensorFlow loads, in one line without the usage block

Files without a section of their own:
      errors.py: its one-line parser: TestCommandLine, TestBadInput (cross-cutting)
      config.py: its type and range rules: TestBadInput (cross-cutting)
      batches.py: through TestEvaluate, TestSearchShardsAndResume, TestRankStudy
      rank_plot.py: TestRankingSearchChoice (the cost panel)
      rank_study.py: TestRankStudy (its runs chosen, trained, scored), TestRankCommand (the second seeds' plan)
      bench_chunks.py: TestRankBench (chunks, time left, a row trained again)
      bench.py, worker_bench.py: bench.py's flags: TestBadInput; the bench itself measures, it is not a test
"""
import argparse
import ast
import configparser
import contextlib
import csv
import dataclasses
import glob
import hashlib
import itertools
import json
import math
import os
import pathlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import pytest
import tensorflow as tf

import atomic_files
import batches
import bench
import bench_chunks
import bench_methods
import ckpt
import compiler
import config
import convert
import data_fc2
import data_sintel_kitti
import deploy
import deployment
import devices
import distribute
import edge_tables
import errors
import evaluate
import export
import fair
import fc2_pipeline
import firmware
import flowio
import flowviz
import metrics
import noise_choice
import parallel
import pareto
import rank
import rank_bench
import rank_plot
import rank_study
import ranking
import refine
import refining
import run_files
import runs
import scoring
import search
import search_parts
import search_tree
import stopping
import supernet
import synthetic
import tensorflow_quiet
import train
import train_graph
import training

HERE = pathlib.Path(__file__).parent
COMMANDS = ("train", "evaluate", "search", "export", "rank", "deploy", "bench",
            "refine")  # the entry points (docs/design.md)
PRODUCT_MODULES = sorted(p.stem for p in HERE.glob("*.py") if p.stem != "test_all")


# ==== 0. shared helpers and fixtures =================================================================================


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
    """Overwrite a variable's value in a session, through its initializer (the graph does not grow)."""
    sess.run(variable.initializer, {variable.initial_value: np.asarray(value, np.float32)})


# Every line an entry point writes to stderr is its own: one of these (never TensorFlow's, absl's, TFLite's).
PROGRAM_LINES = re.compile(r"^(synthetic data: |search: |error: )")


@pytest.fixture(scope="session", autouse=True)
def temp_files_in_pytest_folder(tmp_path_factory):
    """Every temporary file of the session, its child processes' included, in pytest's own temporary folder
    (which pytest prunes): TensorFlow's autograph writes a module per converted function to the temp folder and
    removes it only at a normal exit, so each command a test kills would leave its modules in the system's."""
    folder = str(tmp_path_factory.mktemp("tmp"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", folder)
        patch.setattr(tempfile, "tempdir", folder)  # this process has read TMPDIR already
        yield folder


def tiny_config(**overrides):
    """config.json with the changes a CPU test needs."""
    cfg = json.loads((HERE / "config.json").read_text())
    cfg.update(input_h=32, input_w=48, batch_size=2, weight_decay=0.0, grad_clip_norm=0.0)
    cfg.update(overrides)
    return cfg


RUN_FLAGS = ["--input_h", "32", "--input_w", "48", "--synthetic_train_size", "8", "--synthetic_val_size", "4",
             "--batch_size", "2", "--steps_per_epoch", "2", "--fast_mode", "--log_every", "1", "--seed", "9"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The output folder of one tiny run of 2 epochs, "whole" (resumes: see TestTrainResume)."""
    out = tmp_path_factory.mktemp("outputs")
    assert train.main(RUN_FLAGS + ["--output_dir", str(out), "--experiment_name", "whole", "--num_epochs", "2"]) == 0
    return out


def _history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run_main(main, argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _folder_bytes(path):
    """Every file of a folder but the lock, by relative path: what 'unchanged' compares."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(pathlib.Path(path).rglob("*"))
            if p.is_file() and p.name != ".lock"}


_CLEAN_ENV_KEYS = ("TF_CPP_MIN_LOG_LEVEL", "GPU", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")


def user_env():
    """os.environ without the settings a caller may have given (log level, GPU, make's flags): what
    a command typed by a user sees (importing devices here set the log level for this process)."""
    return {k: v for k, v in os.environ.items() if k not in _CLEAN_ENV_KEYS}


# ==== 1. tensorflow_quiet.py: the one door to TensorFlow =============================================================


_TF_STARTUP_LINE = ("absl::InitializeLog", "cuInit", "cuda_", "cudart", "oneDNN", "cpu_feature_guard")


class TestTensorflowQuiet:
    def test_a_python_without_tensorflow_is_told_in_one_line(self):
        script = "import sys; sys.modules['tensorflow'] = None; from tensorflow_quiet import tf; tf.Graph"
        result = subprocess.run([sys.executable, "-c", script], cwd=HERE, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr == (f"tensorflow is not installed for {sys.executable}: `make venv`, "
                                 "then run .venv/bin/python\n")

    def test_tensorflow_start_up_lines_are_held_back_at_levels_2_and_3_and_shown_at_0(self, tmp_path):
        use = "from tensorflow_quiet import tf; tf.constant(1); print(tf.get_logger().level)"
        runs = {level: subprocess.Popen([sys.executable, "-c", use], cwd=HERE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True,
                                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL=level)) for level in "023"}
        deploy_command = [sys.executable, "deploy.py", "--experiment_name", "nosuchrun", "--target", "himax-we2",
                          "--output_dir", str(tmp_path)]
        deploying = subprocess.run(deploy_command, cwd=HERE, capture_output=True, text=True, timeout=300,
                                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        outcome = {level: proc.communicate(timeout=300) for level, proc in runs.items()}
        said = {level: err for level, (_, err) in outcome.items()}
        assert said["2"] == "" and said["3"] == ""
        assert outcome["2"][0] == outcome["3"][0] == "40\n" != outcome["0"][0]  # its Python logger: errors only
        assert any(word in said["0"] for word in _TF_STARTUP_LINE)  # the user asked for every line
        assert deploying.returncode == 1 and deploying.stderr.count("\n") == 1
        assert deploying.stderr.startswith("error: run folder not found: ") and "nosuchrun" in deploying.stderr


# ==== 2. atomic_files.py: files written whole or not at all ==========================================================


class TestAtomicFiles:
    def test_a_folder_swap_leaves_one_whole_folder(self, tmp_path, monkeypatch):
        for one_step in (True, False):  # the kernel swaps the names, or (elsewhere) two renames
            if not one_step:
                monkeypatch.setattr(atomic_files, "_exchange", lambda first, second: False)
            old, new = tmp_path / "deploy_x", tmp_path / "deploy_x.tmp1"
            for folder, name in ((old, "old"), (new, "new")):
                folder.mkdir(exist_ok=True)
                (folder / name).write_text(name)
            atomic_files.replace_folder(str(new), str(old))
            assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy_x"] and _folder_bytes(old) == {"new": b"new"}
            (old / "new").unlink()
        new.mkdir()
        atomic_files.replace_folder(str(new), str(tmp_path / "first"))  # nothing to replace: renamed
        assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy_x", "first"]


# ==== 3. devices.py: the device report, GPU readiness, the paths of a fair step on several devices ===================


FAKE_GPU = ("NVIDIA H100 80GB HBM3", 81559)


def fake_nvidia_smi(directory, gpus):
    """Write an `nvidia-smi` into `directory` that answers --query-gpu as the real one does for
    `gpus` [(name, MiB)], or, with gpus None, fails as it does on a machine without a driver
    (a message on stdout and exit code 9). Returns the directory, to put first on PATH."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if gpus is None:
        body = 'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n'
    else:
        with_memory = "\\n".join(f"{name}, {mib}" for name, mib in gpus)
        names = "\\n".join(name for name, _ in gpus)
        body = f'case "$*" in\n  *memory.total*) printf "{with_memory}\\n" ;;\n  *) printf "{names}\\n" ;;\nesac\n'
    script = directory / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return directory


def env_with_path_first(directory, **extra):
    """user_env() with `directory` first on PATH and `extra` added."""
    env = user_env()
    env["PATH"] = f"{directory}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


def requirements_tensorflow_line():
    """The tensorflow requirement of requirements.txt, found by reading the file line by line."""
    for line in (HERE / "requirements.txt").read_text().splitlines():
        name = line.split(";")[0].strip()
        if name.startswith("tensorflow") and name[len("tensorflow"):][:1] in ("", "<", ">", "=", "!", "~", " "):
            return name
    raise AssertionError("requirements.txt has no tensorflow line")


def conv_count(arch):
    """Convolutions of one subnet, counted from the layer table of docs/design.md: E0, E1, Down1, Down2,
    Up1, Up2, five head convs, and two per ResBlock of the four depth blocks (option + 1 blocks)."""
    return 6 + 5 + sum(2 * (option + 1) for option in arch[:4])


_STEP_ON_DEVICES_SCRIPT = r'''
import json, sys
import numpy as np
import devices
import tensorflow as tf
import fair, train_graph

cfg = json.load(open(sys.argv[1]))
hardware = devices.report(3, log=None, paths=fair.paths_per_cycle())
# Graph rewrites cost most of a first run and are not what this compares (placement is the placer's).
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (2, 32, 48, 6)).astype(np.float32)
y = rng.normal(0, 2, (2, 32, 48, 2)).astype(np.float32)
cycle = fair.fair_cycle(3, 0)
start, after, convs = None, {}, {}
trace = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.SOFTWARE_TRACE)
for name, placement in (("one", None), ("three", hardware["path_devices"])):
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 6])
        flows = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 2])
        step = train_graph.build_train_step(cfg, images, flows, 10, placement)
        trainable = {v.op.name: v for v in tf.compat.v1.trainable_variables()}
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        start = start or sess.run(trainable)
        sess.run([v.initializer for v in trainable.values()],  # both graphs start from the same weights
                 {v.initial_value: start[key] for key, v in trainable.items()})
        metadata = tf.compat.v1.RunMetadata()
        sess.run(step["train_op"], {images: x, flows: y, step["arch_paths"]: cycle}, options=trace,
                 run_metadata=metadata)
        after[name] = sess.run(trainable)
    convs[name] = {}
    for dev in metadata.step_stats.dev_stats:
        for node in dev.node_stats:
            op = node.timeline_label.split(" = ", 1)[-1].split("(", 1)[0]
            if "Conv2D" in op:  # oneDNN builds name theirs _MklNativeConv2D...: keep the part from Conv2D on
                op = op[op.index("Conv2D"):]
                per_device = convs[name].setdefault(dev.device.split("device:")[-1], {})
                per_device[op] = per_device.get(op, 0) + 1
variable_devices = sorted({op.device for op in graph.get_operations() if op.type == "VarHandleOp"})  # of "three"
np.savez(sys.argv[2] + ".npz", **{f"{k}|{n}": v for k, values in [("start", start), *after.items()]
                                  for n, v in values.items()})
json.dump({"path_devices": hardware["path_devices"], "summary": hardware["summary"], "convs": convs,
           "variable_devices": variable_devices,
           "cycle": [list(map(int, a)) for a in cycle]}, open(sys.argv[2] + ".json", "w"))
'''


class TestGpuInstall:
    @pytest.mark.parametrize("gpus, override, cuda", [
        ([FAKE_GPU], None, True), (None, None, False), ([FAKE_GPU, FAKE_GPU], "0", False), (None, "1", True),
        ([], None, False)])
    def test_make_venv_asks_for_the_cuda_build_where_nvidia_smi_lists_a_gpu(self, tmp_path, gpus, override, cuda):
        path = fake_nvidia_smi(tmp_path / "bin", gpus)
        args = ["make", "-n", "-B", "venv"] + ([f"GPU={override}"] if override else [])
        out = subprocess.run(args, cwd=HERE, env=env_with_path_first(path), capture_output=True, text=True, check=True)
        installs = [line for line in out.stdout.splitlines()
                    if "pip install" in line and "-r requirements.txt" in line]
        assert len(installs) == 1, out.stdout
        requirement = requirements_tensorflow_line()
        cuda_requirement = requirement.replace("tensorflow", "tensorflow[and-cuda]", 1)
        assert (f'"{cuda_requirement}"' in installs[0]) == cuda
        assert ("and-cuda" in out.stdout) == cuda
        assert (".installed-cuda" in out.stdout) == cuda  # a CPU environment is completed by GPU=1

    def test_make_tensorboard_serves_outputs_on_tb_port(self):
        env = env_with_path_first(HERE)
        lines = {port: subprocess.run(["make", "-n", "tensorboard"] + ([f"TB_PORT={port}"] if port else []), cwd=HERE,
                                      env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
                 for port in (None, 7123)}
        assert lines[None].endswith("-m tensorboard.main --logdir outputs --port 6006")
        assert lines[7123].endswith("-m tensorboard.main --logdir outputs --port 7123")
        requirements = (HERE / "requirements.txt").read_text().split()
        assert any(line.split(">")[0].strip() == "tensorboard" for line in requirements)
        import importlib.util
        assert importlib.util.find_spec("tensorboard.main") is not None

    def test_nvidia_smi_listing_is_read_and_a_failing_one_lists_nothing(self, tmp_path, monkeypatch):
        import devices
        two = fake_nvidia_smi(tmp_path / "two", [FAKE_GPU, ("NVIDIA A100-SXM4-40GB", 40960)])
        monkeypatch.setenv("PATH", str(two))
        assert devices.nvidia_smi_gpus() == [{"name": FAKE_GPU[0], "memory_mib": FAKE_GPU[1]},
                                             {"name": "NVIDIA A100-SXM4-40GB", "memory_mib": 40960}]
        monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "broken", None)))
        assert devices.nvidia_smi_gpus() == []
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        assert devices.nvidia_smi_gpus() == []


class TestDeviceReport:
    @pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="TensorFlow sees a GPU here")
    def test_report_names_the_cpu_threads_and_a_gpu_tensorflow_cannot_use(self, tmp_path, monkeypatch):
        import devices
        threads = len(os.sched_getaffinity(0))
        monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
        monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'none', None)}{os.pathsep}{os.environ['PATH']}")
        printed = []
        info = devices.report(log=printed.append)
        assert printed == [info["summary"]] and info["gpus"] == [] and info["path_devices"] == ["/device:CPU:0"]
        assert f"no GPU visible: {threads} CPU threads" in info["summary"] and "nvidia-smi" not in info["summary"]
        json.dumps(info)  # goes into JSON outputs as it is
        monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", str(threads + 1))  # TensorFlow's own, read from the environment
        assert f"no GPU visible: {threads + 1} CPU threads" in devices.report(log=None)["summary"]
        monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
        monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'one', [FAKE_GPU])}{os.pathsep}{os.environ['PATH']}")
        with pytest.raises(errors.DeviceError, match=r"nvidia-smi lists 1 GPU \(NVIDIA H100 80GB HBM3\) but "
                                                      r"TensorFlow sees none.*make venv GPU=1.*--allow_cpu"):
            devices.report(allow_cpu=False, log=None)
        info = devices.report(log=None)
        assert info["unusable_gpus"] and "no GPU visible" in info["summary"] and "make venv GPU=1" in info["summary"]
        with pytest.raises(errors.DeviceError, match="between 1 and 3"):  # one device per path at most
            devices.report(4, log=None, paths=fair.paths_per_cycle())

    @pytest.mark.slow
    def test_train_says_the_device_once_quietly_and_stops_where_a_gpu_goes_unused(self, tmp_path):
        missing = str(tmp_path / "no_fc2_here")
        command = [sys.executable, "train.py", "--base_path", missing, "--output_dir", str(tmp_path)]
        # three train.py at once with generated run names: each gets its own folder (and lock)
        envs = {"cpu": (env_with_path_first(fake_nvidia_smi(tmp_path / "none", None)), []),
                "gpu unused": (env_with_path_first(fake_nvidia_smi(tmp_path / "one", [FAKE_GPU])), []),
                "user log level": (env_with_path_first(tmp_path / "none", TF_CPP_MIN_LOG_LEVEL="0"), [])}
        procs = {name: subprocess.Popen(command + extra, cwd=HERE, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for name, (env, extra) in envs.items()}
        out = {name: proc.communicate(timeout=300) + (proc.returncode,) for name, proc in procs.items()}
        threads = len(os.sched_getaffinity(0))
        stdout, stderr, code = out["cpu"]
        assert stdout.count("devices: no GPU visible") == 1 and f"no GPU visible: {threads} CPU threads" in stdout
        assert code == 1 and stderr == f"error: base_path '{missing}' is not a directory\n"  # nothing from TensorFlow
        stdout, stderr, code = out["gpu unused"]
        assert code == 1 and stdout == "" and stderr.count("\n") == 1
        assert stderr.startswith("error: nvidia-smi lists 1 GPU")
        assert "make venv GPU=1" in stderr and "--allow_cpu" in stderr
        stdout, stderr, code = out["user log level"]
        assert code == 1 and "no GPU visible" in stdout
        assert any(word in stderr for word in _TF_STARTUP_LINE)  # the user's setting wins: TensorFlow speaks

    def test_devices_flag_is_checked(self, tmp_path, capsys):
        assert train.main(["--devices", "4", "--dry_run", "--output_dir", str(tmp_path)]) == 1
        assert "'devices' must be at most 3" in capsys.readouterr().err
        assert train.main(["--devices", "0", "--dry_run", "--output_dir", str(tmp_path)]) == 1
        assert "'devices' must be > 0" in capsys.readouterr().err


class TestFairStepOnDevices:
    @pytest.mark.slow
    def test_fair_step_on_three_devices_updates_the_weights_as_on_one(self, tmp_path):
        cfg_path = tmp_path / "cfg.json"
        cfg_path.write_text(json.dumps(tiny_config(optimizer="sgd", learning_rate=0.05)))
        out = tmp_path / "step"
        env = {k: v for k, v in os.environ.items() if k not in _CLEAN_ENV_KEYS}
        subprocess.run([sys.executable, "-c", _STEP_ON_DEVICES_SCRIPT, str(cfg_path), str(out)], cwd=HERE, env=env,
                       check=True, timeout=600)
        meta = json.loads(out.with_suffix(".json").read_text())
        values = np.load(out.with_suffix(".npz"))
        names = [key.split("|", 1)[1] for key in values.files if key.startswith("start|")]
        assert meta["path_devices"] == ["/device:CPU:0", "/device:CPU:1", "/device:CPU:2"]
        assert "the paths of a fair step on CPU:0, CPU:1, CPU:2" in meta["summary"]
        # Placement: on one device every convolution ran on CPU:0, E0 and E1 (which read the images)
        # once for the three paths. On three, CPU:p ran path p's other fixed layers and option p of
        # every block (the convolutions of all-p but E0 and E1), forward and gradient; E0 and E1
        # ran beside the variables, on CPU:0.
        assert list(meta["convs"]["one"]) == ["CPU:0"]
        once = sum(map(conv_count, meta["cycle"])) - 2 * 2
        assert meta["convs"]["one"]["CPU:0"] == {"Conv2D": once, "Conv2DBackpropFilter": once,
                                                 "Conv2DBackpropInput": once - 1}  # E0's input needs none
        for p in range(3):
            ops = meta["convs"]["three"][f"CPU:{p}"]
            own = conv_count(supernet.uniform_arch(p)) - 2 + (2 if p == 0 else 0)
            assert ops.get("Conv2D") == own and ops.get("Conv2DBackpropFilter") == own, (p, ops)
        assert set(meta["variable_devices"]) <= {"", "/device:CPU:0"}  # every variable on the first device
        moved = 0
        for name in names:
            start, one, three = (values[f"{k}|{name}"] for k in ("start", "one", "three"))
            scale = max(np.abs(one - start).max(), 1e-12)
            np.testing.assert_allclose(three - start, one - start, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
            moved += np.abs(one - start).max() > 1e-6
        assert moved > len(names) // 2  # the step really moved the weights it compares

    @pytest.mark.slow
    def test_train_on_three_devices_as_a_user_types_it(self, tmp_path):
        """The --devices command of docs/training.md on a machine without a GPU: three logical CPU devices, the run
        finishes, and every line on stderr is the program's own."""
        result = subprocess.run([sys.executable, "train.py", "--synthetic", "--input_h", "32", "--input_w", "48",
                                 "--batch_size", "2", "--synthetic_train_size", "8", "--synthetic_val_size", "4",
                                 "--num_epochs", "1", "--steps_per_epoch", "2", "--eval_pool_size", "3",
                                 "--bn_recal_batches", "1", "--devices", "3", "--output_dir", str(tmp_path)],
                                cwd=HERE, env=user_env(), capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr
        assert "the paths of a fair step on CPU:0, CPU:1, CPU:2" in result.stdout
        assert all(PROGRAM_LINES.match(line) for line in result.stderr.splitlines()), result.stderr
        (report,) = tmp_path.glob("*/train_report.json")
        assert json.loads(report.read_text())["devices"]["path_devices"] == [f"/device:CPU:{i}" for i in range(3)]


# ==== 4. supernet.py: the search space, the arch codec, the TF1 graph, params and MACs ===============================


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


class TestSupernetArchCodec:
    def test_every_code_round_trips(self):
        seen = set()
        for index in range(supernet.SPACE.num_archs):
            arch = supernet.index_to_arch(index)
            assert supernet.arch_to_index(supernet.parse_arch(supernet.format_arch(arch))) == index
            seen.add(arch)
        assert seen == set(itertools.product(range(3), repeat=9))

    @pytest.mark.parametrize("code, words", [
        ("0,1", "2 fields"), ("0,1,3,0,0,0,0,0,0", "field 2 (DB0)"), ("a,b,c", "3 fields"),
        ("", "empty"), ("0,1,2,0,1,2,0,1,x", "field 8 (H2Out)"), ("0,1,2,0,1,2,0,1,-1", "field 8"),
        (1, "arch code is 1, not a string"),
    ])
    def test_malformed_codes_are_rejected_naming_the_problem(self, code, words):
        with pytest.raises(errors.ArchError, match=words.replace("(", r"\(").replace(")", r"\)")):
            supernet.parse_arch(code)

    def test_validate_rejects_bools_floats_and_wrong_length(self):
        for bad in [(0,) * 8, (0,) * 8 + (True,), (0,) * 8 + (1.0,), (0,) * 8 + (3,)]:
            with pytest.raises(errors.ArchError):
                supernet.validate_arch(bad)

    def test_supernet_self_test_cli(self, capsys):
        assert supernet.main(["--self_test"]) == 0
        out = capsys.readouterr().out
        assert "all 19683 codes" in out and out.count("rejected") == 4

    @pytest.mark.parametrize("text", ["3_2x4_8", "+32x48", "32x48x4", "\uff13\uff12x48", "32x"])
    def test_sizes_are_parsed_strictly(self, text):
        with pytest.raises(errors.ArchError, match="is not HxW"):
            supernet.parse_size(text)
        with pytest.raises(errors.DeployError, match="--sizes"):
            deployment.parse_sizes(f"64x96,{text}")
        with pytest.raises(SystemExit):
            search.parse_args(["--size", text])
        assert supernet.parse_size(" 32 X 48 ") == (32, 48) and deployment.parse_sizes("32x48,64x96") == [(64, 96),
                                                                                                          (32, 48)]


class TestSupernetCost:
    def test_reference_sizes_match_a_hand_count(self):
        # By hand from docs/design.md, all-0 at 180x240 (k*k*cin*cout kernels + 2*cout BN per conv):
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
    def test_built_static_graph_has_the_analytic_parameter_count(self, arch):
        graph = tf.Graph()
        with graph.as_default():
            supernet.build_flows(tf.compat.v1.placeholder(tf.float32, [1, 32, 48, 6]), arch, mode="eval")
        assert supernet.graph_param_count(graph) == supernet.count_params(arch, 32, 48)

    def test_dynamic_graph_holds_every_option_once(self):
        graph = tf.Graph()
        with graph.as_default():
            supernet.build_flows(tf.compat.v1.placeholder(tf.float32, [1, 32, 48, 6]),
                                 tf.compat.v1.placeholder(tf.int32, [9]), mode="train")
        names = variables_by_name(graph)

        def params(arch, heads):
            rows = supernet.layer_table(arch, 32, 48)
            return sum(k * k * ci * co + (2 * co if bn else 0)
                       for name, k, ci, co, _, _, bn in rows if name.startswith("H") == heads)

        # The deepest body once (depth options are nested) plus every head option's own weights.
        expected = params((2,) * 9, False) + sum(params((o,) * 9, True) for o in range(3))
        assert supernet.graph_param_count(graph) == expected
        assert "supernet/H2Out/k5/conv/kernel" in names and "supernet/DB0/rb3/conv2/kernel" in names

    def test_input_size_must_be_a_multiple_of_4(self):
        with pytest.raises(errors.ArchError, match="h=30"):
            supernet.check_input_size(30, 40)


class TestSupernetGraph:
    @pytest.mark.slow
    @pytest.mark.parametrize("mode", ["train", "eval"])
    def test_dynamic_and_static_forms_agree(self, mode):
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

    @pytest.mark.slow
    def test_dynamic_form_runs_only_the_chosen_convolutions(self):
        arch = (2, 0, 1, 1, 2, 0, 2, 1, 0)
        graph, images, arch_in, dynamic, _, init = _dynamic_and_static(arch, "train")
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.SOFTWARE_TRACE)
        metadata = tf.compat.v1.RunMetadata()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(init)
            sess.run(dynamic, {images: np.zeros((2, 32, 48, 6)), arch_in: arch}, options=options,
                     run_metadata=metadata)
        kinds = [node.timeline_label.split(" = ", 1)[-1].split("(", 1)[0]
                 for device in metadata.step_stats.dev_stats for node in device.node_stats]
        executed = sum("Conv2D" in k and "Backprop" not in k for k in kinds)
        # Masking would run all 3 options of every block; switching runs exactly the subnet's convs.
        assert executed == len(supernet.layer_table(arch, 32, 48)) == 27

    @pytest.mark.slow
    def test_only_chosen_options_receive_gradient(self):
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
            # ResBlocks start as the identity (last gamma 0), which blocks their conv gradients; give
            # every gamma a trained-looking value so the chosen convs must receive gradient.
            rng = np.random.default_rng(1)
            for name, v in variables_by_name(graph).items():
                if name.endswith("gamma"):
                    set_variable(sess, v, rng.uniform(0.5, 1.5, v.shape.as_list()))
            values = sess.run(fetch, {images: np.random.default_rng(0).uniform(-1, 1, (2, 32, 48, 6)), arch_in: arch})
        norm = {name: float(np.abs(values[name]).sum()) if name in values else 0.0
                for name in (v.op.name for v in variables)}
        chosen = {"EB0": {1}, "EB1": {1, 2}, "DB0": {1, 2, 3}, "DB1": {1}}
        for stage, blocks in chosen.items():
            for b in (1, 2, 3):
                g = norm[f"supernet/{stage}/rb{b}/conv1/kernel"]
                assert (g > 0) == (b in blocks), (stage, b, g)
        for block, option in zip(supernet.SPACE.blocks[4:], arch[4:]):
            for o, k in enumerate(supernet.SPACE.by_name['H1'].options):
                g = norm[f"supernet/{block}/k{k}/conv/kernel"]
                assert (g > 0) == (o == option), (block, k, g)
        assert norm["supernet/E0/conv/kernel"] > 0

    @pytest.mark.slow
    def test_every_resblock_starts_as_the_identity(self):
        graph = tf.Graph()
        with graph.as_default():
            images = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 6])
            arch_in = tf.compat.v1.placeholder(tf.int32, [9])
            flows = supernet.build_flows(images, arch_in, mode="train")
            init = tf.compat.v1.global_variables_initializer()
        x = np.random.default_rng(4).uniform(-1, 1, (2, 32, 48, 6))
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(init)
            gammas = {n: sess.run(v) for n, v in variables_by_name(graph).items() if n.endswith("/bn2/gamma")}
            shallow, deep = (sess.run(flows, {images: x, arch_in: (d,) * 4 + (0,) * 5}) for d in (0, 2))
        assert len(gammas) == 4 * 3 and all((g == 0).all() for g in gammas.values())
        for s, d in zip(shallow, deep):  # depth options compute the same function until trained
            np.testing.assert_allclose(s, d, rtol=1e-5, atol=1e-5)

    def test_outputs_are_accumulated_across_scales(self):
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
            h1_options = supernet.SPACE.by_name['H1'].options
            for head, k in (("H1Out", h1_options[arch[6]]), ("H2Out", h1_options[arch[8]])):
                kernel = names[f"supernet/{head}/k{k}/conv/kernel"]
                set_variable(sess, kernel, np.zeros(kernel.shape.as_list()))
            z4, z2, z1 = sess.run(flows, {images: x})
        np.testing.assert_allclose(z4, f4, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z2, bilinear_resize_np(f4, 16, 24), rtol=1e-4, atol=1e-5)
        twice = bilinear_resize_np(bilinear_resize_np(f4, 16, 24), 32, 48)
        np.testing.assert_allclose(z1, twice, rtol=1e-4, atol=1e-5)
        # With the residuals on, the full-resolution output differs from the upsampled coarse flow.
        assert np.abs(f1 - bilinear_resize_np(f2, 32, 48)).max() > 1e-4


# ==== 5. fair.py: the strict-fairness sampler, fairness counts and gap, the eval pool ================================


class TestFairSampler:
    def test_every_fair_cycle_is_three_permutations_over_many_seeds(self):
        for seed in range(40):
            for step in range(25):
                paths = fair.fair_cycle(seed, step)
                assert len(paths) == 3
                for block in range(9):
                    assert sorted(p[block] for p in paths) == [0, 1, 2]

    def test_cycles_depend_on_seed_and_step_only(self):
        assert fair.fair_cycle(42, 17) == fair.fair_cycle(42, 17)
        assert len({fair.fair_cycle(42, s) for s in range(50)}) > 45
        assert [fair.fair_cycle(1, s) for s in range(10)] != [fair.fair_cycle(2, s) for s in range(10)]

    def test_counts_are_equal_and_gap_zero_after_whole_steps(self):
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

    def test_counts_resume_where_they_left_off(self):
        first = fair.counts_for_steps(7, 0, 13)
        assert fair.counts_for_steps(7, 13, 20, first) == fair.counts_for_steps(7, 0, 33)

    @pytest.mark.slow
    @pytest.mark.parametrize("size, seed", [(12, 42), (3, 0), (24, 5)])
    def test_eval_pool_covers_every_option_equally(self, size, seed):
        pool = fair.build_eval_pool(size, seed)
        assert pool[:3] == [(0,) * 9, (1,) * 9, (2,) * 9]
        assert len(set(pool)) == size
        for c in range(size // 3):
            cycle = pool[3 * c: 3 * c + 3]
            assert all(sorted(p[b] for p in cycle) == [0, 1, 2] for b in range(9))
        coverage = fair.pool_coverage(pool)
        assert coverage["ok"], coverage["problems"]
        assert fair.build_eval_pool(size, seed) == pool

    def test_eval_pool_coverage_check_catches_problems(self):
        pool = fair.build_eval_pool(12, 42)
        assert not fair.pool_coverage(pool[:-1] + [pool[0]])["ok"]
        assert not fair.pool_coverage(pool[:11])["ok"]
        with pytest.raises(errors.ConfigError, match="multiple of 3"):
            fair.build_eval_pool(10, 42)

    def test_fair_cli_checks(self, capsys):
        assert fair.main(["--cycles", "30", "--seed", "3", "--check"]) == 0
        out = capsys.readouterr().out
        assert "fairness gap: 0" in out and out.count(" 30 ") + out.count("30\n") >= 9
        with pytest.raises(SystemExit):
            fair.main(["--pool", "--size", "10"])


# ==== 6. ckpt.py: best/last checkpoints with their meta, one writer per folder =======================================


SAVER_LOOP = r"""
import sys, tensorflow as tf
sys.path.insert(0, sys.argv[1])
import ckpt
graph = tf.Graph()
with graph.as_default():
    value = tf.compat.v1.get_variable("v", [4_000_000], initializer=tf.compat.v1.zeros_initializer())
    step = tf.compat.v1.placeholder(tf.float32, [])
    assign = value.assign(tf.fill([4_000_000], step))
    saver = tf.compat.v1.train.Saver([value])
with tf.compat.v1.Session(graph=graph) as sess:
    for i in range(1, 100000):
        sess.run(assign, {step: float(i)})
        ckpt.save(sess, saver, sys.argv[2], "last", {"global_step": i, "epoch": i, "search_space": {}})
        print(i, flush=True)
"""


class TestCkpt:
    @pytest.mark.slow
    def test_sigkill_while_saving_leaves_a_loadable_checkpoint(self, tmp_path):
        script = tmp_path / "saver_loop.py"
        script.write_text(SAVER_LOOP)
        run_dir = tmp_path / "run"
        for kill_after in (0.05, 0.13, 0.31):  # each save of the 16 MB variable takes tens of ms
            proc = subprocess.Popen([sys.executable, str(script), str(HERE), str(run_dir)],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert proc.stdout.readline().strip() == "1"  # one checkpoint committed; now kill mid-loop
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            meta = ckpt.load_meta(str(run_dir), "last")
            graph = tf.Graph()
            with graph.as_default():
                value = tf.compat.v1.get_variable("v", [4_000_000])
                saver = tf.compat.v1.train.Saver([value])
            with tf.compat.v1.Session(graph=graph) as sess:
                saver.restore(sess, meta["prefix"])
                restored = sess.run(value)
            assert (restored == meta["global_step"]).all()

    def test_checkpoint_input_size_is_refused_only_when_asked(self):
        meta = {"search_space": ckpt.search_space_signature(32, 48)}
        ckpt.check_compatible(meta, None, None, "x")  # scoring: any size
        with pytest.raises(errors.CheckpointError, match="input_size"):
            ckpt.check_compatible(meta, 64, 48, "x")  # resuming training: the same size
        other = {"search_space": dict(meta["search_space"], version="9blocks-0123456789ab")}
        # made before versions: read by blocks, options and kernels
        legacy = {"search_space": {"blocks": list(supernet.SPACE.blocks), "num_options": 3, "kernel_sizes": [3, 5, 7],
                                   "input_size": [32, 48]}}
        ckpt.check_compatible(legacy, 32, 48, "x")
        legacy_other = {"search_space": dict(legacy["search_space"], kernel_sizes=[3, 5, 9])}
        for size in ((None, None), (32, 48)):
            for theirs in (other, legacy_other):
                with pytest.raises(errors.CheckpointError, match="search space .* this code has"):
                    ckpt.check_compatible(theirs, *size, "x")

    def test_the_refusal_names_the_process_holding_the_lock_not_the_pid_in_the_file(self, tmp_path):
        script = ("import fcntl, os, sys, time\n"
                  "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                  "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                  "os.write(fd, b'1')\n"  # a PID that is not the holder's: written over by hand, or reused
                  "print('held', flush=True)\n"
                  "time.sleep(60)")
        holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / ".lock")], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert holder.stdout.readline().strip() == "held" and (tmp_path / ".lock").read_text() == "1"
            with pytest.raises(errors.CheckpointError) as refused:
                with ckpt.writer_lock(str(tmp_path), "run"):
                    pass
            assert str(refused.value) == f"run {tmp_path} is being written by another process (PID {holder.pid})"
        finally:
            holder.kill()
            holder.wait()


# ==== 7. synthetic.py: synthetic FlyingChairs-style pairs with exactly known motion ==================================


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


class TestSynthetic:
    @pytest.mark.parametrize("seed, knobs", [(0, {}), (1, {}), (2, {}),
                                             (3, {"num_objects": [6, 9], "object_radius": [0.08, 0.16],
                                                  "object_shift": [0.05, 0.2], "object_degrees": 15.0})])
    def test_synthetic_flow_warps_img1_back_to_img0(self, seed, knobs):
        h, w = 96, 128
        scene = synthetic.render_synthetic_scene(np.random.default_rng(seed), h, w, synthetic.Scene.of(knobs))
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

    def test_the_study_scene_is_one_exact_affine_motion(self):
        study = config.read_config_file(str(HERE / "study.json"))
        h, w = study["input_h"], study["input_w"]
        scene = synthetic.render_synthetic_scene(np.random.default_rng(4), h, w,
                                                 synthetic.Scene.of(study["synthetic_scene"]))
        assert not scene["layers0"].any()  # the background alone
        ys, xs = np.mgrid[0:h, 0:w]
        points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], 1)
        affine, residual, *_ = np.linalg.lstsq(points, (scene["flow"].reshape(-1, 2) + points[:, :2]), rcond=None)
        assert np.abs(points @ affine - points[:, :2] - scene["flow"].reshape(-1, 2)).max() < 1e-4
        assert np.abs(scene["flow"]).max() > 1.0  # it moves
        with pytest.raises(errors.DataError, match="unknown knob 'colour'"):
            synthetic.Scene.of({"colour": 1})
        with pytest.raises(errors.DataError, match="knob 'wavelength' must be a range"):
            synthetic.Scene.of({"wavelength": [0.0, 4.0]})

    def test_synthetic_is_seeded_and_reproducible(self):
        a = synthetic.make_synthetic_arrays(3, 24, 32, seed=7)
        b = synthetic.make_synthetic_arrays(3, 24, 32, seed=7)
        c = synthetic.make_synthetic_arrays(3, 24, 32, seed=8)
        assert a["img0"].shape == (3, 24, 32, 3) and a["img0"].dtype == np.uint8
        assert a["flow"].shape == (3, 24, 32, 2) and a["flow"].dtype == np.float32
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert not np.array_equal(a["img0"], c["img0"])
        assert a["img0"].std() > 10 and np.abs(a["flow"]).max() > 0.5  # texture and motion, not constants


# ==== 8. flowio.py: .flo, PNG frames and KITTI 16-bit flow PNGs ======================================================


def _hand_flo_bytes(width, height, values, tag=b"PIEH"):
    return tag + struct.pack("<ii", width, height) + struct.pack(f"<{len(values)}f", *values)


def _png16_bytes(rgb):
    """A 16-bit RGB PNG written byte by byte (filter type 0 rows, zlib), independent of any PNG writer."""
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + np.asarray(rgb[y], ">u2").tobytes() for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _write_png8(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())


class TestFlowioFlo:
    def test_flo_round_trip_is_bit_exact(self, tmp_path):
        rng = np.random.default_rng(0)
        flow = rng.normal(0, 30, (5, 7, 2)).astype(np.float32)
        flow[0, 0] = [-0.0, 1e9]  # negative zero and Middlebury's "unknown" marker survive too
        flow[1, 1] = [np.inf, np.nan]
        path = str(tmp_path / "x.flo")
        flowio.write_flo(path, flow)
        back = flowio.read_flo(path)
        assert back.dtype == np.float32 and back.shape == (5, 7, 2)
        assert np.array_equal(back.view(np.uint32), flow.view(np.uint32))
        assert os.path.getsize(path) == 12 + 5 * 7 * 2 * 4

    def test_read_flo_of_hand_written_bytes(self, tmp_path):
        # width 3, height 2; u, v interleaved, row-major: pixel (row r, col c) = (10r + c, -(10r + c))
        values = [v for r in range(2) for c in range(3) for v in (10 * r + c, -(10 * r + c))]
        path = tmp_path / "hand.flo"
        path.write_bytes(_hand_flo_bytes(3, 2, values))
        flow = flowio.read_flo(str(path))
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
    def test_read_flo_malformed_names_the_file(self, tmp_path, content, words):
        path = tmp_path / "bad_sample.flo"
        path.write_bytes(content)
        with pytest.raises(errors.DataError, match=words) as info:
            flowio.read_flo(str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)

    def test_read_flo_missing_file_and_write_bad_shape_name_the_file(self, tmp_path):
        with pytest.raises(errors.DataError, match="nothere.flo"):
            flowio.read_flo(str(tmp_path / "nothere.flo"))
        with pytest.raises(errors.DataError, match="out.flo"):
            flowio.write_flo(str(tmp_path / "out.flo"), np.zeros((4, 4, 3), np.float32))


class TestFlowioPngAndKitti:
    def test_kitti_16_bit_flow_and_valid_bit_decode_by_hand(self, tmp_path):
        rgb = np.zeros((2, 3, 3), np.int64)
        rgb[0, 0] = (32768 + 64 * 3, 32768 - 32, 1)      # u = 3, v = -0.5, valid
        rgb[0, 1] = (32768 - 64 * 250 - 1, 32768 + 7, 65535)  # u = -250.015625, v = 0.109375, valid
        rgb[1, 2] = (40000, 20000, 0)                     # invalid: its flow does not count
        path = tmp_path / "000000_10.png"
        path.write_bytes(_png16_bytes(rgb))
        flow, valid = flowio.read_kitti_flow(str(path))
        np.testing.assert_array_equal(valid, [[1, 1, 0], [0, 0, 0]])
        np.testing.assert_array_equal(flow[0, 0], [3.0, -0.5])
        np.testing.assert_array_equal(flow[0, 1], [-250.015625, 0.109375])
        assert not flow[1].any() and flow.dtype == np.float32

    def test_damaged_png_is_an_error_naming_the_file(self, tmp_path):
        path = tmp_path / "frame_0001.png"
        _write_png8(path, np.full((8, 8, 3), 7, np.uint8))
        path.write_bytes(path.read_bytes()[:40])
        with pytest.raises(errors.DataError, match="frame_0001.png: cannot decode PNG"):
            flowio.read_png_rgb(str(path))


# ==== 9. data_fc2.py: FC2 lists and folders, the dataset check, the synthetic fallback ===============================


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


def _centre(array, crop_hw):
    top = (array.shape[0] - crop_hw[0]) // 2
    left = (array.shape[1] - crop_hw[1]) // 2
    return array[top:top + crop_hw[0], left:left + crop_hw[1]]


def _find_window(big, small):
    """Top-left corners where `small` equals a window of `big`."""
    h, w = small.shape[:2]
    return [(t, l) for t in range(big.shape[0] - h + 1) for l in range(big.shape[1] - w + 1)
            if np.array_equal(big[t:t + h, l:l + w], small)]


def _cfg(**overrides):
    cfg = dict(base_path="", data_layout="auto", synthetic=False, synthetic_train_size=3,
               synthetic_val_size=2, input_h=24, input_w=32, seed=11)
    cfg.update(overrides)
    return cfg


class TestDataFc2Layouts:
    def test_lists_and_folders_give_the_same_samples(self, fc2_tree):
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

    def test_list_layout_with_absolute_paths(self, fc2_tree, tmp_path):
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
    def test_split_index_errors_name_the_list_file(self, fc2_tree, tmp_path, index_text, words):
        base = _copy_tree(fc2_tree, tmp_path / "copy")
        with open(os.path.join(base, "FC2_test.txt"), "w") as f:
            f.write(index_text)
        with pytest.raises(errors.DataError, match=words) as info:
            data_fc2.list_samples(base, "val", "lists")
        assert "FC2_test.txt" in str(info.value)

    def test_check_dataset_names_a_deleted_file(self, fc2_tree, tmp_path):
        base = _copy_tree(fc2_tree, tmp_path / "copy")
        victim = data_fc2.list_samples(base, "train", "lists")[4][2]
        os.remove(victim)
        for layout in ("lists", "folders"):
            with pytest.raises(errors.DataError) as info:
                data_fc2.check_dataset(base, layout)
            message = str(info.value)
            assert message.startswith("1 of 8 samples in split 'train' are incomplete")
            assert victim in message

    def test_check_dataset_rejects_an_empty_split_and_missing_base(self, fc2_tree, tmp_path):
        base = _copy_tree(fc2_tree, tmp_path / "copy")
        open(os.path.join(base, "FC2_test.txt"), "w").close()
        with pytest.raises(errors.DataError, match="split 'val' .* has no samples"):
            data_fc2.check_dataset(base, "lists")
        with pytest.raises(errors.DataError, match="not a directory"):
            data_fc2.check_dataset(str(tmp_path / "absent"), "auto")
        with pytest.raises(errors.DataError, match="neither"):
            data_fc2.detect_layout(str(tmp_path))

    def test_layout_choice_is_said_and_a_half_lists_layout_refused(self, fc2_tree, tmp_path, capsys):
        tree = _copy_tree(fc2_tree, tmp_path / "fc2")
        assert "(lists layout: FC2_dirnames.txt found)" in data_fc2.open_data(_cfg(base_path=tree))["reason"]
        os.remove(os.path.join(tree, data_fc2.DIRNAMES_FILE))
        with pytest.raises(errors.DataError, match=r"FC2_dirnames.txt: missing, but FC2_train.txt is there"):
            data_fc2.open_data(_cfg(base_path=tree))
        opened = data_fc2.open_data(_cfg(base_path=tree, data_layout="folders"))
        assert "(folders layout: data_layout)" in opened["reason"]


class TestDataFc2Check:
    def test_a_sample_in_both_splits_and_a_grayscale_png_are_refused(self, fc2_tree, tmp_path):
        tree = _copy_tree(fc2_tree, tmp_path / "fc2")
        test_list = pathlib.Path(tree) / data_fc2.SPLIT_LIST_FILES["val"]
        first_train = (pathlib.Path(tree) / data_fc2.SPLIT_LIST_FILES["train"]).read_text().split()[0]
        test_list.write_text(test_list.read_text() + first_train + "\n")
        with pytest.raises(errors.DataError, match="in both the train and the val split"):
            data_fc2.check_dataset(tree, "lists")
        tree = _copy_tree(fc2_tree, tmp_path / "fc2b")
        img = data_fc2.list_samples(tree, "train", "lists")[2][0]
        grey = tf.io.encode_png(tf.constant(np.zeros((H, W, 1), np.uint8))).numpy()
        pathlib.Path(img).write_bytes(grey)
        with pytest.raises(errors.DataError, match=f"{img}: grayscale PNG"):
            data_fc2.check_dataset(tree, "lists")

    def test_check_names_a_truncated_flo_and_a_png_cut_in_half(self, fc2_tree, tmp_path, capsys):
        for which in (2, 0):
            tree = _copy_tree(fc2_tree, tmp_path / f"fc2_{which}")
            path = pathlib.Path(data_fc2.list_samples(tree, "train", "lists")[3][which])
            raw = path.read_bytes()
            path.write_bytes(raw[:1000] if which == 2 else raw[:len(raw) // 2])
            assert data_fc2.main(["--check", "--base_path", tree]) == 1
            err = capsys.readouterr().err.strip().splitlines()
            words = "short .flo file: 1000 bytes" if which == 2 else "truncated PNG"
            assert len(err) == 1 and f"{path}: {words}" in err[0], err

    def test_cli_make_then_check_then_delete(self, tmp_path, capsys):
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

    def test_written_fc2_tree_matches_the_synthetic_arrays(self, fc2_tree):
        arrays = synthetic.make_synthetic_arrays(10, H, W, seed=3)
        samples = [s for split in data_fc2.SPLITS for s in data_fc2.list_samples(fc2_tree, split, "lists")]
        for img0, img1, flow in samples:
            i = int(os.path.basename(img0)[:7])
            assert np.array_equal(_decode_png(img0), arrays["img0"][i])
            assert np.array_equal(_decode_png(img1), arrays["img1"][i])
            assert np.array_equal(flowio.read_flo(flow), arrays["flow"][i])
        with pytest.raises(errors.DataError, match="already exists"):
            data_fc2.write_synthetic_fc2(fc2_tree, 4, h=H, w=W)


class TestDataFc2OpenData:
    def test_open_data_synthetic_only_when_asked_or_unconfigured(self, fc2_tree):
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

    def test_open_data_never_falls_back_when_base_path_is_broken(self, fc2_tree, tmp_path):
        with pytest.raises(errors.DataError, match="not a directory"):
            data_fc2.open_data(_cfg(base_path=str(tmp_path / "missing")))
        (tmp_path / "empty").mkdir()
        with pytest.raises(errors.DataError, match="neither"):
            data_fc2.open_data(_cfg(base_path=str(tmp_path / "empty")))
        base = _copy_tree(fc2_tree, tmp_path / "copy")
        victim = data_fc2.list_samples(base, "val", "folders")[0][0]
        os.remove(victim)
        with pytest.raises(errors.DataError, match="split 'val' are incomplete") as info:
            data_fc2.open_data(_cfg(base_path=base, data_layout="folders"))
        assert victim in str(info.value)
        with pytest.raises(errors.DataError, match="data_layout"):
            data_fc2.open_data(_cfg(base_path=fc2_tree, data_layout="csv"))


# ==== 10. fc2_pipeline.py: the tf.data input pipeline: decoding, crops, normalisation, data order, batching ==========

class TestFc2PipelineCrops:
    def test_normalise_maps_uint8_to_unit_range(self):
        x = np.arange(256, dtype=np.uint8)
        y = fc2_pipeline.normalise(x)
        assert y.dtype == np.float32 and y[0] == -1.0 and y[-1] == 1.0 and np.all(np.diff(y) > 0)
        assert np.array_equal(fc2_pipeline.normalise(tf.constant(x)).numpy(), y)
        with pytest.raises(errors.DataError, match="uint8"):
            fc2_pipeline.normalise(x.astype(np.float32))

    def test_eval_pipeline_is_centre_crop_unclipped_and_deterministic(self, fc2_tree):
        samples = data_fc2.list_samples(fc2_tree, "train", "lists")[:5]
        dataset = fc2_pipeline.make_dataset(samples, 2, CROP, train=False, max_flow=0.1, seed=0)
        batches = list(dataset)
        assert [b[0].shape[0] for b in batches] == [2, 2, 1]  # last partial batch kept
        images = np.concatenate([b[0].numpy() for b in batches])
        flows = np.concatenate([b[1].numpy() for b in batches])
        assert images.shape == (5, 24, 32, 6) and flows.shape == (5, 24, 32, 2)
        assert images.min() >= -1.0 and images.max() <= 1.0
        for i, (img0, img1, flow) in enumerate(samples):
            assert np.array_equal(flows[i], _centre(flowio.read_flo(flow), CROP))  # not clipped to 0.1
            expected = np.concatenate([_centre(_decode_png(p), CROP) for p in (img0, img1)], axis=-1)
            assert np.array_equal(images[i], expected.astype(np.float32) / 127.5 - 1)
        again = np.concatenate([b[1].numpy() for b in dataset])
        assert np.array_equal(again, flows)

    def test_eval_pipeline_reads_hand_written_flo(self, tmp_path):
        values = [float(v) for v in range(3 * 4 * 2)]  # height 3, width 4
        (tmp_path / "0-flow_01.flo").write_bytes(_hand_flo_bytes(4, 3, values))
        image = tf.io.encode_png(np.full((3, 4, 3), 255, np.uint8)).numpy()
        for name in ("0-img_0.png", "0-img_1.png"):
            (tmp_path / name).write_bytes(image)
        sample = tuple(str(tmp_path / n) for n in ("0-img_0.png", "0-img_1.png", "0-flow_01.flo"))
        dataset = fc2_pipeline.make_dataset([sample], 1, (3, 4), train=False, max_flow=1, seed=0)
        images, flow = next(iter(dataset))
        assert np.array_equal(flow.numpy()[0], np.array(values, np.float32).reshape(3, 4, 2))
        assert np.all(images.numpy() == 1.0)

    def test_train_pipeline_random_crop_clip_and_repeat(self, fc2_tree):
        samples = data_fc2.list_samples(fc2_tree, "train", "lists")
        max_flow = 0.75
        first = list(fc2_pipeline.make_dataset(samples, 3, CROP, train=True, max_flow=max_flow, seed=5).take(4))
        second = list(fc2_pipeline.make_dataset(samples, 3, CROP, train=True, max_flow=max_flow, seed=5).take(4))
        assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0]) for a, b in zip(first, second))
        # 4 batches of 3 from 8 samples: the stream repeats and every batch is full
        assert all(b[0].shape == (3, 24, 32, 6) and b[1].shape == (3, 24, 32, 2) for b in first)
        flows = np.concatenate([b[1].numpy() for b in first])
        images = np.concatenate([b[0].numpy() for b in first])
        assert np.abs(flows).max() == pytest.approx(max_flow)
        assert images.min() >= -1.0 and images.max() <= 1.0
        # every crop is a window of some sample (its image and clipped flow at the same corner)
        decoded = [(_decode_png(img0), np.clip(flowio.read_flo(flow), -max_flow, max_flow))
                   for img0, _, flow in samples]
        corners = set()
        for image, flow in zip(images, flows):
            img0 = np.rint((image[..., :3] + 1) * 127.5).astype(np.uint8)
            matches = [(t, l) for img, fl in decoded for t, l in _find_window(img, img0)
                       if np.array_equal(fl[t:t + CROP[0], l:l + CROP[1]], flow)]
            assert matches
            corners.update(matches)
        assert len(corners) > 1  # random, not always the centre

    def test_pipeline_from_synthetic_arrays_and_crop_errors(self, fc2_tree):
        arrays = synthetic.make_synthetic_arrays(3, 24, 32, seed=1)
        dataset = fc2_pipeline.make_dataset(arrays, 3, (24, 32), train=False, max_flow=1, seed=0)
        images, flow = next(iter(dataset))
        assert np.array_equal(flow.numpy(), arrays["flow"])
        assert np.array_equal(images.numpy()[..., 3:], fc2_pipeline.normalise(arrays["img1"]))
        with pytest.raises(errors.DataError, match="smaller than the 25x32 crop"):
            fc2_pipeline.make_dataset(arrays, 1, (25, 32), train=True, max_flow=1, seed=0)
        samples = data_fc2.list_samples(fc2_tree, "val", "lists")
        with pytest.raises(errors.DataError, match="flow_01.flo: 32x48 sample is smaller than the 24x64"):
            fc2_pipeline.make_dataset(samples, 1, (24, 64), train=False, max_flow=1, seed=0)

    def test_pipeline_names_a_malformed_flo_at_run_time(self, fc2_tree, tmp_path):
        base = _copy_tree(fc2_tree, tmp_path / "copy")
        samples = data_fc2.list_samples(base, "train", "lists")[:2]
        with open(samples[1][2], "r+b") as f:
            f.write(b"XXXX")
        with pytest.raises(tf.errors.InvalidArgumentError, match="wrong .flo tag") as info:
            list(fc2_pipeline.make_dataset(samples, 1, CROP, train=False, max_flow=1, seed=0))
        assert samples[1][2] in str(info.value)

    @pytest.mark.parametrize("source_kind", ["files", "arrays"])
    def test_pipeline_in_tf1_graph_mode(self, fc2_tree, source_kind):
        if source_kind == "files":
            source = data_fc2.list_samples(fc2_tree, "train", "lists")
        else:
            source = synthetic.make_synthetic_arrays(3, H, W, seed=2)
        with tf.Graph().as_default():
            dataset = fc2_pipeline.make_dataset(source, 2, CROP, train=True, max_flow=5.0, seed=1)
            images, flow = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
            assert images.shape.as_list() == [2, 24, 32, 6] and flow.shape.as_list() == [2, 24, 32, 2]
            with tf.compat.v1.Session() as session:
                image_values, flow_values = session.run([images, flow])
        assert image_values.min() >= -1.0 and image_values.max() <= 1.0
        assert np.abs(flow_values).max() <= 5.0 and np.abs(flow_values).max() > 0


class TestFc2PipelineOrder:
    def test_training_batches_read_the_samples_batch_samples_names(self):
        n, batch, seed = 5, 3, 7
        rng = np.random.default_rng(0)
        flow = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 4, 6, 2)).copy()
        arrays = {"img0": rng.integers(0, 256, (n, 4, 6, 3), dtype=np.uint8),
                  "img1": rng.integers(0, 256, (n, 4, 6, 3), dtype=np.uint8), "flow": flow}
        dataset = fc2_pipeline.make_dataset(arrays, batch, (4, 6), True, 100.0, seed)
        read = [b[1].numpy()[:, 0, 0, 0].astype(int).tolist() for b in dataset.take(4)]
        # by hand: epoch e visits every sample once, in default_rng([seed, e])'s permutation; 12 reads cross 2 epochs
        stream = np.concatenate([np.random.default_rng([seed, e]).permutation(n) for e in range(3)])
        assert read == [stream[s * batch:(s + 1) * batch].tolist() for s in range(4)]
        paths = [(f"{i}-img_0.png", f"{i}-img_1.png", f"{i}-flow_01.flo") for i in range(n)]
        assert fc2_pipeline.training_batch_samples(paths, seed, [1, 3], batch) == [
            paths[i] for i in np.concatenate([stream[3:6], stream[9:12]])]
        assert fc2_pipeline.training_batch_samples(arrays, seed, [0], batch) == []

    def test_it_is_the_one_module_that_builds_tf_data_datasets(self):
        builders = [m for m in PRODUCT_MODULES if "tf.data.Dataset" in (HERE / f"{m}.py").read_text()]
        assert builders == ["fc2_pipeline"]


# ==== 11. data_sintel_kitti.py: MPI-Sintel and KITTI 2015 at full frame ==============================================


def _write_sintel(root, scenes, size=(38, 50), seed=0):
    """A Sintel training tree (clean pass) with scenes {name: frames}; returns {(scene, n): (img0, img1, flow)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for scene, count in scenes.items():
        frames = [rng.integers(0, 256, size + (3,), dtype=np.uint8) for _ in range(count)]
        for n, frame in enumerate(frames, 1):
            _write_png8(root / "training" / "clean" / scene / f"frame_{n:04d}.png", frame)
        (root / "training" / "flow" / scene).mkdir(parents=True, exist_ok=True)
        for n in range(1, count):
            flow = rng.normal(0, 3, size + (2,)).astype(np.float32)
            flowio.write_flo(str(root / "training" / "flow" / scene / f"frame_{n:04d}.flo"), flow)
            written[(scene, n)] = (frames[n - 1], frames[n], flow)
    return written


def _write_kitti(root, sizes, seed=0):
    """A KITTI 2015 training tree, flow PNG bytes written by hand; returns {id: (flow, valid)} as
    the KITTI devkit defines them from the stored 16-bit values."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i, (h, w) in enumerate(sizes):
        for frame in ("10", "11"):
            _write_png8(root / "training" / "image_2" / f"{i:06d}_{frame}.png",
                        rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        uv = rng.integers(2 ** 15 - 900, 2 ** 15 + 900, (h, w, 2))
        valid = rng.random((h, w)) < 0.6
        rgb = np.concatenate([uv, valid[..., None]], axis=-1) * valid[..., None]
        (root / "training" / "flow_occ").mkdir(parents=True, exist_ok=True)
        (root / "training" / "flow_occ" / f"{i:06d}_10.png").write_bytes(_png16_bytes(rgb))
        truth[f"{i:06d}_10"] = ((uv - 32768) / 64.0 * valid[..., None], valid.astype(np.float32))
    return truth


def _hand_metrics(pairs):
    """EPE, px1/3/5 and Fl-all of (pred, gt, valid) arrays, in plain numpy."""
    epe = np.concatenate([np.sqrt(((p - g) ** 2).sum(-1))[v > 0] for p, g, v in pairs])
    length = np.concatenate([np.sqrt((g ** 2).sum(-1))[v > 0] for _, g, v in pairs])
    return {"epe": epe.mean(), "px1": (epe < 1).mean(), "px3": (epe < 3).mean(), "px5": (epe < 5).mean(),
            "fl_all": ((epe > 3) & (epe > 0.05 * length)).mean()}


class TestSintelKitti:
    def test_sintel_pairs_consecutive_frames_with_their_flow(self, tmp_path):
        written = _write_sintel(tmp_path, {"cave_2": 3, "alley_1": 2})
        samples = data_sintel_kitti.list_sintel_samples(str(tmp_path), "clean")
        scene_frames = [(pathlib.Path(s[0]).parent.name, pathlib.Path(s[0]).name, pathlib.Path(s[1]).name,
                         pathlib.Path(s[2]).relative_to(tmp_path).as_posix()) for s in samples]
        assert scene_frames == [
            ("alley_1", "frame_0001.png", "frame_0002.png", "training/flow/alley_1/frame_0001.flo"),
            ("cave_2", "frame_0001.png", "frame_0002.png", "training/flow/cave_2/frame_0001.flo"),
            ("cave_2", "frame_0002.png", "frame_0003.png", "training/flow/cave_2/frame_0002.flo")]
        img0, img1, flow, valid = flowio.load_eval_sample(samples[2])
        for got, want in zip((img0, img1, flow), written[("cave_2", 2)]):
            np.testing.assert_array_equal(got, want)
        assert valid.shape == (38, 50) and valid.min() == 1

    def test_eval_batches_group_sizes_and_read_inside_a_session(self, tmp_path):
        truth = _write_kitti(tmp_path, [(37, 50), (32, 44), (38, 49), (40, 52)])
        batches = data_sintel_kitti.EvalBatches(data_sintel_kitti.list_kitti_samples(str(tmp_path)), batch_size=2)
        assert [pathlib.Path(s[0]).name[:6] for s in batches.samples] == ["000000", "000002", "000003", "000001"]
        assert batches.batch_sizes == [(40, 52), (40, 52), (32, 44)] and len(batches) == 3
        assert batches.frame_sizes == [(37, 50), (38, 49), (40, 52), (32, 44)]
        with tf.compat.v1.Session(graph=tf.Graph()):  # a graph context: reading must still give arrays
            images, flows, valid = batches[0]
            last = batches[-1]
        assert images.shape == (2, 40, 52, 6) and valid.dtype == np.float32 and last[1].shape == (1, 32, 44, 2)
        np.testing.assert_array_equal(flows[1, :38, :49], truth["000002_10"][0])
        np.testing.assert_array_equal(valid[1, :38, :49], truth["000002_10"][1])
        assert data_sintel_kitti.EvalBatches(batches.samples, batch_size=2, limit=1).samples == batches.samples[:2]

    def test_padding_does_not_change_the_metrics_of_a_zero_prediction(self):
        rng = np.random.default_rng(4)
        img0, img1 = (rng.integers(0, 256, (37, 50, 3), dtype=np.uint8) for _ in range(2))
        flow = rng.normal(0, 4, (37, 50, 2)).astype(np.float32)
        valid = (rng.random((37, 50)) < 0.7).astype(np.float32)
        images, flow_p, valid_p = data_sintel_kitti.pad_sample(img0, img1, flow, valid)
        assert images.shape == (40, 52, 6) and flow_p.shape == (40, 52, 2) and valid_p.shape == (40, 52)
        assert not valid_p[37:].any() and not valid_p[:, 50:].any() and (flow_p[:37, :50] == flow).all()
        np.testing.assert_array_equal(images[39, 51, :3], img0[36, 49] / np.float32(127.5) - 1)  # edge replicated
        graph = tf.Graph()
        with graph.as_default():
            padded = metrics.flow_metric_sums(tf.zeros([1, 40, 52, 2]), tf.constant(flow_p[None]),
                                              tf.constant(valid_p[None]))
            plain = metrics.flow_metric_sums(tf.zeros([1, 37, 50, 2]), tf.constant(flow[None]),
                                             tf.constant(valid[None]))
        with tf.compat.v1.Session(graph=graph) as sess:
            padded, plain = sess.run([padded, plain])
        for key in plain:
            assert padded[key] == pytest.approx(plain[key], rel=1e-6), key
        by_hand = _hand_metrics([(0 * flow, flow, valid)])
        assert padded["epe"] / padded["pixels"] == pytest.approx(by_hand["epe"], rel=1e-5)


# ==== 12. metrics.py: EPE, px1/px3/px5, Fl-all, the zero-flow baseline, the paired SE ================================


class TestMetrics:
    def test_metrics_of_a_hand_built_prediction(self):
        gt = np.random.default_rng(0).normal(0, 5, (2, 4, 6, 2)).astype(np.float32)
        offset = np.zeros_like(gt)
        offset[:, :2] = (6.0, 8.0)   # half the pixels off by 10 px
        offset[:, 2] = (0.0, 2.0)    # a quarter off by 2 px
        offset[:, 3] = (0.0, 0.5)    # a quarter off by 0.5 px
        graph = tf.Graph()
        with graph.as_default():
            sums = metrics.flow_metric_sums(tf.constant(gt + offset), tf.constant(gt))
        with tf.compat.v1.Session(graph=graph) as sess:
            s = sess.run(sums)
        assert s["pixels"] == 48
        assert s["epe"] / s["pixels"] == pytest.approx((24 * 10 + 12 * 2 + 12 * 0.5) / 48, rel=1e-5)
        assert (s["px1"], s["px3"], s["px5"]) == (12, 24, 24)
        lengths = np.sqrt((gt.astype(np.float64) ** 2).sum(-1))
        assert metrics.zero_flow_epe([(None, gt)]) == pytest.approx(lengths.mean())

    def test_masked_epe_fl_all_and_zero_flow_against_a_hand_computation(self):
        gt = np.zeros((1, 2, 2, 2), np.float32)
        pred = np.zeros_like(gt)
        gt[0, 0, 0], pred[0, 0, 0] = (10, 0), (10, 4)      # EPE 4 > 3 and > 5% of 10: an outlier
        gt[0, 0, 1], pred[0, 0, 1] = (100, 0), (104, 0)    # EPE 4 > 3 but < 5% of 100: not one
        gt[0, 1, 0], pred[0, 1, 0] = (0, 0), (0.6, -0.8)   # EPE 1: neither below 1 nor an outlier
        gt[0, 1, 1], pred[0, 1, 1] = (3, 4), (300, 400)    # invalid: ignored whatever its error
        valid = np.array([[[1, 1], [1, 0]]], np.float32)
        graph = tf.Graph()
        with graph.as_default():
            sums = metrics.flow_metric_sums(tf.constant(pred), tf.constant(gt), tf.constant(valid))
        with tf.compat.v1.Session(graph=graph) as sess:
            result = metrics.metrics_from_sums(metrics.add_sums({}, sess.run(sums)))
        assert result["epe"] == pytest.approx((4 + 4 + 1) / 3, rel=1e-6)
        assert result["fl_all"] == pytest.approx(1 / 3) and result["px1"] == 0
        assert result["px3"] == pytest.approx(1 / 3) and result["px5"] == 1
        assert metrics.zero_flow_epe([(None, gt, valid)]) == pytest.approx((10 + 100 + 0) / 3)
        assert metrics.zero_flow_epe([(None, gt)]) == pytest.approx((10 + 100 + 0 + 5) / 4)

    def test_paired_se_is_the_standard_error_of_the_epe_difference(self):
        rng = np.random.default_rng(0)
        a, b = rng.gamma(2.0, 1.0, 50), rng.gamma(2.0, 1.0, 50)
        pixels = np.full(50, 100.0)  # equal pixels: the std of the per-sample EPE differences over sqrt(n)
        assert metrics.paired_se(a * 100, b * 100, pixels) == pytest.approx(np.std(a - b, ddof=1) / np.sqrt(50))
        pixels = rng.integers(50, 150, 400).astype(float)  # masks of different sizes: a ratio's delta method ...
        d = rng.normal(0.1, 1.0, 400) * pixels
        mean_p, ratio = pixels.mean(), d.sum() / pixels.sum()
        by_hand = np.sqrt(np.sum(((d - ratio * pixels) / mean_p) ** 2) / (400 * 399))
        assert metrics.paired_se(d, np.zeros(400), pixels) == pytest.approx(by_hand)
        jackknife = [(d.sum() - d[i]) / (pixels.sum() - pixels[i]) for i in range(400)]  # ... near the jackknife's
        assert metrics.paired_se(d, np.zeros(400), pixels) == pytest.approx(np.sqrt(399 * np.var(jackknife)), rel=0.02)
        assert metrics.paired_se([1.0], [2.0], [3.0]) is None

    def test_a_perfect_prediction_at_another_size_scores_the_resize_floor(self):
        rng = np.random.default_rng(1)
        frame = (32, 48)
        gt = bilinear_resize_np(rng.normal(0, 4, (2, 8, 12, 2)), *frame)  # a smooth true flow at the frame's size
        for size in ((16, 24), (24, 32), frame):
            scale = np.array([size[1] / frame[1], size[0] / frame[0]])
            perfect = bilinear_resize_np(gt, *size) * scale  # the true flow sampled at `size`, in its pixels
            back = bilinear_resize_np(perfect, *frame) / scale  # numpy, independent of metrics.to_frame
            floor = np.sqrt(np.square(back - gt).sum(-1)).mean()
            pred = tf.constant(perfect, tf.float32)
            sums = metrics.flow_metric_sums(metrics.to_frame(pred, frame), tf.constant(gt, tf.float32))
            epe = metrics.metrics_from_sums({k: np.asarray(v) for k, v in sums.items()})["epe"]
            assert epe == pytest.approx(floor, rel=1e-4, abs=1e-6)
            assert (floor > 0.05) == (size != frame)


# ==== 13. scoring.py: BN recalibration and scoring of one subnet =====================================================


def _scorer_graph():
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(11)
        images = tf.compat.v1.placeholder(tf.float32, [None, 32, 48, 6])
        flows = tf.compat.v1.placeholder(tf.float32, [None, 32, 48, 2])
        scorer = scoring.build_scorer(images, flows)
        init = tf.compat.v1.global_variables_initializer()
    return graph, scorer, init


def _random_batches(n, seed, batch=2):
    rng = np.random.default_rng(seed)
    return [(rng.uniform(-1, 1, (batch, 32, 48, 6)).astype(np.float32),
             rng.normal(0, 2, (batch, 32, 48, 2)).astype(np.float32)) for _ in range(n)]


class TestScoring:
    @pytest.mark.slow
    def test_recalibrated_statistics_are_the_exact_batch_averages(self):
        arch = (1, 2, 0, 1, 2, 0, 1, 2, 0)
        graph, scorer, init = _scorer_graph()
        names = variables_by_name(graph)
        stats = {n: v for n, v in names.items() if n.endswith(("moving_mean", "moving_variance"))}
        with graph.as_default():
            e0_conv = tf.nn.conv2d(scorer["images"], names["supernet/E0/conv/kernel"], 2, "SAME")
        batches = _random_batches(3, 1)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(init)
            single = []
            for images, flows in batches:  # each batch alone: its own batch statistics
                scoring.score_subnet(sess, scorer, arch, [(images, flows)], [(images, flows)])
                single.append(sess.run(stats))
            scoring.score_subnet(sess, scorer, arch, batches, batches[:1])
            together = sess.run(stats)
            convs = [sess.run(e0_conv, {scorer["images"]: images}) for images, _ in batches]
        # E0 against numpy: mean over batches of each batch's per-channel mean / biased variance.
        np.testing.assert_allclose(together["supernet/E0/bn/moving_mean"],
                                   np.mean([c.mean(axis=(0, 1, 2)) for c in convs], axis=0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(together["supernet/E0/bn/moving_variance"],
                                   np.mean([c.var(axis=(0, 1, 2)) for c in convs], axis=0), rtol=1e-4, atol=1e-6)
        used = [n for n in stats if not np.allclose(single[0][n], single[1][n])]
        assert "supernet/DB0/rb1/bn2/moving_mean" in used and "supernet/H2/k7/bn/moving_variance" in used
        assert not any(n.startswith(("supernet/DB0/rb2", "supernet/H2/k3", "supernet/H2/k5")) for n in used)
        for n in used:  # every BN of the subnet holds the average of its per-batch statistics
            np.testing.assert_allclose(together[n], np.mean([s[n] for s in single], axis=0), rtol=1e-4, atol=1e-5)

    @pytest.mark.slow
    def test_scoring_order_does_not_change_scores(self):
        a, b = (0, 1, 2, 0, 1, 2, 0, 1, 2), (2, 2, 1, 1, 0, 0, 2, 1, 0)
        graph, scorer, init = _scorer_graph()
        recal, val = _random_batches(2, 3), _random_batches(2, 4)
        results = []
        for order in ((a, b), (b, a)):
            with tf.compat.v1.Session(graph=graph) as sess:  # a fresh session: the same seeded initial weights
                sess.run(init)
                results.append({arch: scoring.score_subnet(sess, scorer, arch, recal, val) for arch in order})
        for arch in (a, b):
            for key, value in results[0][arch].items():
                assert results[1][arch][key] == pytest.approx(value, rel=1e-6, abs=1e-7), (arch, key)
        with tf.compat.v1.Session(graph=graph) as sess:  # recalibration really changes the scores
            sess.run(init)
            unrecalibrated = scoring.score_subnet(sess, scorer, a, [], val)["epe"]
            assert unrecalibrated != pytest.approx(results[0][a]["epe"], rel=1e-3)

    @pytest.mark.slow
    def test_scored_epe_is_that_of_the_accumulated_flow(self):
        arch = (0, 0, 0, 0, 1, 1, 1, 1, 1)
        graph, scorer, init = _scorer_graph()
        with graph.as_default():
            flows_eval = supernet.build_flows(scorer["images"], arch, mode="eval")
        recal, val = _random_batches(1, 5), _random_batches(1, 6)
        images, gt = val[0]
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(init)
            scored = scoring.score_subnet(sess, scorer, arch, recal, val)
            f2, f1 = sess.run(flows_eval[1:], {scorer["images"]: images})
        accumulated = np.sqrt(((f1 - gt) ** 2).sum(-1)).mean()
        residual = f1 - bilinear_resize_np(f2, 32, 48)
        assert scored["epe"] == pytest.approx(accumulated, rel=1e-5)
        assert np.sqrt(((residual - gt) ** 2).sum(-1)).mean() != pytest.approx(accumulated, rel=1e-3)


# ==== 14. train.py: training flags, config resolution, resume ========================================================


DEPENDABLE_FLAGS = ["--input_h", "24", "--input_w", "32", "--batch_size", "2", "--steps_per_epoch", "2",
                    "--num_epochs", "2", "--eval_pool_size", "3", "--bn_recal_batches", "2", "--log_every", "1",
                    "--seed", "4", "--data_layout", "lists"]


def _checkpoint_tensors(run_dir, kind="last"):
    meta = json.loads((pathlib.Path(run_dir) / "checkpoints" / kind / "meta.json").read_text())
    reader = tf.train.load_checkpoint(str(pathlib.Path(run_dir) / "checkpoints" / kind / meta["checkpoint"]))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.fixture(scope="module")
def dependable(tmp_path_factory, fc2_tree):
    """A run of 2 epochs on the FC2 tree ("base": resumed with --num_epochs 3, it trains), its
    output folder and its flags."""
    out = tmp_path_factory.mktemp("dependable")
    flags = DEPENDABLE_FLAGS + ["--base_path", fc2_tree, "--output_dir", str(out)]
    assert train.main(flags + ["--experiment_name", "base"]) == 0
    return out, flags


def _copy_run(dependable, tmp_path):
    out, _ = dependable
    shutil.copytree(out / "base", tmp_path / "run")
    return tmp_path / "run"


def _resume_fails(run, capsys, words, *flags, main=train.main):
    """Resume (or evaluate) `run`: exit 1, one line holding `words`, every file of the run unchanged."""
    before = _folder_bytes(run)
    args = ["--output_dir", str(run.parent), "--experiment_name", run.name, *flags]
    code, err = _run_main(main, (["--resume", "--num_epochs", "3"] if main is train.main else []) + args, capsys)
    assert code == 1 and len(err) == 1, err
    for word in words:
        assert word in err[0], err
    assert _folder_bytes(run) == before
    assert not list(run.rglob("*.tmp*")) and not list(run.rglob("*tempstate*"))


class TestTrainResume:
    @pytest.mark.slow
    def test_nan_in_a_validation_flow_is_refused_before_any_metric(self, dependable, fc2_tree, tmp_path, capsys):
        tree = _copy_tree(fc2_tree, tmp_path / "fc2")
        val = data_fc2.list_samples(tree, "val", "lists")[1]
        flow = flowio.read_flo(val[2])
        flow[0, 0, 1] = np.inf
        flowio.write_flo(val[2], flow)
        _resume_fails(_copy_run(dependable, tmp_path), capsys, [f"{val[2]}: flow holds 1 non-finite"],
                           "--base_path", tree)

    @pytest.mark.slow
    @pytest.mark.parametrize("edit, words", [
        (lambda m: {k: v for k, v in m.items() if k != "epoch"}, ["meta.json: field 'epoch' is missing"]),
        (lambda m: [m], ["meta.json: must hold a JSON object, got list"]),
        (lambda m: dict(m, global_step="12"), ["field 'global_step' must be an integer >= 0, got '12'"]),
        (lambda m: dict(m, checkpoint="../best/" + m["checkpoint"]), ["field 'checkpoint' must name a model-* file"]),
        (lambda m: dict(m, best_metric=None, bad_epochs=-1), ["field 'bad_epochs' must be an integer >= 0"]),
    ])
    def test_a_bad_meta_is_one_line_naming_the_field(self, dependable, tmp_path, capsys, edit, words):
        run = _copy_run(dependable, tmp_path)
        meta_path = run / "checkpoints" / "last" / "meta.json"
        meta_path.write_text(json.dumps(edit(json.loads(meta_path.read_text()))))
        _resume_fails(run, capsys, [str(meta_path)] + words)

    @pytest.mark.slow
    def test_a_garbage_history_is_one_line_naming_the_file(self, dependable, tmp_path, capsys):
        run = _copy_run(dependable, tmp_path)
        (run / "eval_history.csv").write_text("garbage,here\nx,y\n")
        _resume_fails(run, capsys, [str(run / "eval_history.csv"), "columns"])
        lines = (dependable[0] / "base" / "eval_history.csv").read_text().splitlines()
        (run / "eval_history.csv").write_text("\n".join(lines + ["one,two"]) + "\n")
        _resume_fails(run, capsys, [f"{run / 'eval_history.csv'}:{len(lines) + 1}: not an evaluation row"])
        (run / "eval_history.csv").write_text("\n".join(lines[:2] + [lines[1] + ",extra"]) + "\n")
        _resume_fails(run, capsys, [f"{run / 'eval_history.csv'}:3: not an evaluation row"])
        header, first = lines[0].split(","), lines[1].split(",")
        first[header.index("mean_epe")] = "abc"  # a number that is not one
        (run / "eval_history.csv").write_text("\n".join(lines[:1] + [",".join(first)] + lines[2:]) + "\n")
        _resume_fails(run, capsys, [f"{run / 'eval_history.csv'}:2: not an evaluation row"])
        (run / "eval_history.csv").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")
        _resume_fails(run, capsys, [str(run / "eval_history.csv"), "cannot be read as a history"])
        (run / "eval_history.csv").write_text("\n".join(lines) + "\n")
        shutil.rmtree(run / "tb")
        (run / "tb").write_text("not a folder")
        _resume_fails(run, capsys, [str(run / "tb"), "must be the run's TensorBoard folder"])

    @pytest.mark.slow
    def test_a_checkpoint_variable_of_another_shape_is_refused(self, dependable, tmp_path, capsys):
        run = _copy_run(dependable, tmp_path)
        meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
        tensors = _checkpoint_tensors(run)
        name = "supernet/E0/conv/kernel"
        graph = tf.Graph()
        with graph.as_default():
            variables = [tf.compat.v1.Variable(np.zeros((1, 1) + v.shape[2:], v.dtype) if k == name else v, name=k)
                         for k, v in tensors.items()]
            saver = tf.compat.v1.train.Saver(variables)
            with tf.compat.v1.Session(graph=graph) as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                saver.save(sess, str(run / "checkpoints" / "last" / meta["checkpoint"]), write_meta_graph=False,
                           write_state=False)
        shape = list(tensors[name].shape)
        words = [f"holds {name} of shape {[1, 1] + shape[2:]}, this graph has {shape}"]
        _resume_fails(run, capsys, words)
        _resume_fails(run, capsys, words, "--checkpoint_type", "last", main=evaluate.main)

    @pytest.mark.slow
    def test_a_run_config_without_a_key_is_refused_by_evaluate(self, dependable, tmp_path, capsys):
        run = _copy_run(dependable, tmp_path)
        config = json.loads((run / "config.json").read_text())
        del config["input_h"]
        (run / "config.json").write_text(json.dumps(config))
        _resume_fails(run, capsys, [f"{run / 'config.json'}: key 'input_h' must be int"], main=evaluate.main)

    @pytest.mark.slow
    def test_an_output_dir_that_is_a_file_is_named(self, dependable, tmp_path, capsys):
        blocker = tmp_path / "not_a_folder"
        blocker.write_text("x")
        code, err = _run_main(train.main, dependable[1] + ["--output_dir", str(blocker), "--experiment_name", "r"],
                              capsys)
        assert code == 1 and len(err) == 1 and f"{blocker / 'r'}" in err[0], err
        assert blocker.read_text() == "x"

    @pytest.mark.slow
    def test_temp_files_of_a_killed_writer_are_removed_counts_repaired_and_the_run_goes_on(self, dependable,
                                                                                            tmp_path, capsys):
        run = _copy_run(dependable, tmp_path)
        last = run / "checkpoints" / "last"
        meta = json.loads((last / "meta.json").read_text())
        leftovers = [run / "config.json.tmp123", last / "meta.json.tmp77", last / "model-9-1.index",
                     last / f"{meta['checkpoint']}.data-00000-of-00001.tempstate5"]
        for path in leftovers:
            path.write_text("partial")
        (run / "fairness_counts.json").write_text(json.dumps({"global_step": 0}))
        history = (run / "eval_history.csv").read_text()
        assert train.main(["--resume", "--output_dir", str(tmp_path), "--experiment_name", "run",
                           "--num_epochs", "3"]) == 0
        assert not any(p.exists() for p in leftovers)
        counts = json.loads((run / "fairness_counts.json").read_text())
        assert counts["global_step"] == json.loads((last / "meta.json").read_text())["global_step"] == 6
        # the finished run went on for a third epoch: paths and counts as if it had been planned so
        report = json.loads((run / "train_report.json").read_text())
        assert report["epochs_finished"] == 3 and report["fairness_counts"] == fair.counts_for_steps(4, 0, 6)
        assert report["path_sequence_digest"] == fair.sequence_digest(4, 0, 6)
        assert (run / "eval_history.csv").read_text().startswith(history)  # the rows before kept as written
        assert [int(r["epoch"]) for r in _history(run / "eval_history.csv")] == [1, 2, 3]

    @pytest.mark.slow
    def test_runs_of_one_seed_are_identical_a_second_writer_is_refused_and_a_killed_run_resumes_to_them(
            self, dependable, tmp_path):
        out, flags = dependable
        flags = flags + ["--output_dir", str(tmp_path)]
        script = [sys.executable, str(HERE / "train.py")]
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        env["PYTHONUNBUFFERED"] = "1"  # as make starts it: each line as it is printed
        rng = np.random.default_rng()

        def start(argv):
            return subprocess.Popen(script + argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    env=env)

        def kill_after(proc, word, count):
            seen = 0
            for line in proc.stdout:
                seen += word in line
                if seen == count:
                    time.sleep(rng.uniform(0, 0.2))
                    break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        # "killed": the fixture's run once more; a second train.py on it while it trains is refused; it is
        # SIGKILLed during its last evaluation, again 1-2 steps after the restore, then resumed to the end
        killed = start(flags + ["--experiment_name", "killed"])
        assert killed.stdout.readline().startswith("devices:")  # said once the run is locked, before its graph
        second = subprocess.run(script + flags + ["--experiment_name", "killed", "--resume"], capture_output=True,
                                text=True, env=env)
        err = second.stderr.strip().splitlines()
        assert second.returncode == 1 and len(err) == 1
        assert f"run {tmp_path / 'killed'} is being written by another process (PID {killed.pid})" in err[0]
        kill_after(killed, "evaluating", 2)
        first_row = "".join((tmp_path / "killed" / "eval_history.csv").read_text().splitlines(True)[:2])  # epoch 1
        resume = ["--resume", "--output_dir", str(tmp_path), "--experiment_name", "killed"]
        kill_after(start(resume), " step ", int(rng.integers(1, 3)))
        last = subprocess.run(script + resume, capture_output=True, text=True, env=env)
        assert last.returncode == 0 and "done: completed after 2 epochs" in last.stdout
        whole, resumed = _checkpoint_tensors(out / "base"), _checkpoint_tensors(tmp_path / "killed")
        assert whole.keys() == resumed.keys() and all(np.array_equal(whole[k], resumed[k]) for k in whole)
        for kind in ("best", "last"):  # the same files, byte for byte: the identity the bench's kept scores carry
            assert ckpt.checkpoint_digest(out / "base", kind) == ckpt.checkpoint_digest(tmp_path / "killed", kind)
        timing = {"eval_seconds", "wall_time_s"}
        rows = [[{k: v for k, v in r.items() if k not in timing} for r in _history(run / "eval_history.csv")]
                for run in (out / "base", tmp_path / "killed")]
        assert rows[0] == rows[1] and len(rows[0]) == 2
        assert (tmp_path / "killed" / "eval_history.csv").read_text().startswith(first_row)  # kept as written
        report = json.loads((tmp_path / "killed" / "train_report.json").read_text())
        assert report["fairness_counts"] == fair.counts_for_steps(4, 0, 4)
        assert report["path_sequence_digest"] == fair.sequence_digest(4, 0, 4)
        assert "resuming" in (tmp_path / "killed" / "train.log").read_text()


class TestTrainRefusesBadData:
    @pytest.mark.slow
    @pytest.mark.parametrize("fault", ["png body", "nan flow"])
    def test_a_fault_met_in_training_names_the_file(self, tmp_path, fault):
        """train.py as a user types it, on a 20-sample FC2 tree whose 6th training sample is damaged
        where only reading it whole finds it: one line naming the file, exit 1, no run folder left."""
        root = str(tmp_path / "fc2")
        data_fc2.write_synthetic_fc2(root, 20, seed=5, h=H, w=W, val_fraction=0.2)
        sample = data_fc2.list_samples(root, "train", "lists")[5]
        if fault == "png body":  # header and IEND intact: the up-front check passes, decoding fails
            raw = bytearray(pathlib.Path(sample[1]).read_bytes())
            raw[40:-12] = bytes(len(raw) - 52)
            pathlib.Path(sample[1]).write_bytes(bytes(raw))
        else:
            flow = flowio.read_flo(sample[2])
            flow[3, 4, 0] = np.nan
            flowio.write_flo(sample[2], flow)
        result = subprocess.run([sys.executable, str(HERE / "train.py"), "--base_path", root, "--output_dir",
                                 str(tmp_path / "out"), "--experiment_name", "faulty", "--input_h", "24", "--input_w",
                                 "32", "--batch_size", "2", "--num_epochs", "1", "--eval_pool_size", "3",
                                 "--bn_recal_batches", "1", "--eval_batches", "1", "--seed", "4"],
                                capture_output=True, text=True, cwd=HERE, env=user_env())
        words = (f"{sample[1]}: cannot decode PNG" if fault == "png body" else
                 f"{sample[2]}: flow holds 1 non-finite values")
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
        assert not (tmp_path / "out" / "faulty").exists()

    @pytest.mark.slow
    def test_a_failed_fresh_run_leaves_no_folder(self, fc2_tree, tmp_path, capsys):
        tree = _copy_tree(fc2_tree, tmp_path / "fc2")
        val = data_fc2.list_samples(tree, "val", "lists")[0]
        flow = flowio.read_flo(val[2])
        flowio.write_flo(val[2], np.full_like(flow, np.nan))
        code, err = _run_main(train.main, DEPENDABLE_FLAGS + ["--base_path", tree, "--output_dir",
                                                              str(tmp_path / "out"), "--experiment_name", "r"], capsys)
        assert code == 1 and len(err) == 1 and "non-finite" in err[0]
        assert not (tmp_path / "out" / "r").exists()


# ==== 15. training.py: a training run's state ========================================================================


class TestTrainingState:
    def test_best_is_the_lowest_epe_and_patience_counts_improvements_of_min_delta(self):
        cfg = {"early_stop_min_delta": 0.01, "early_stop_patience": 3}
        state = training.RunState(seed=1)
        seen = []
        # 0.995 is a new best but no improvement of 0.01 over 1.0; 0.985 is both; 0.984 and 0.98 are
        # new bests within 0.01 of 0.985, 1.2 is neither: three evaluations without improvement
        for epoch, epe in enumerate([1.0, 0.995, 0.985, 0.984, 1.2, 0.98], 1):
            state.record_evaluation(epe, epoch, cfg)
            seen.append((state.best_metric, state.best_epoch, state.bad_epochs, state.stop_reason))
        assert seen == [(1.0, 1, 0, None), (0.995, 2, 1, None), (0.985, 3, 0, None), (0.984, 4, 1, None),
                        (0.984, 4, 2, None), (0.98, 6, 3, "early_stopping")]
        meta = state.to_meta()
        assert training.RunState.from_meta(meta, "m") == state and meta["patience_metric"] == 0.985
        # a meta written before patience_metric: the patience counts from the best, as it did then
        old = {k: v for k, v in meta.items() if k != "patience_metric"}
        assert training.RunState.from_meta(old, "m").patience_metric == 0.98

    def test_time_left_counts_the_evaluations_to_come(self):
        cfg = {"num_epochs": 10, "eval_every": 3}  # evaluations after epochs 3, 6, 9 and 10
        assert [training.evaluations_left(e, cfg) for e in range(1, 11)] == [4, 4, 4, 3, 3, 3, 2, 2, 2, 1]
        assert training.evaluations_left(5, {"num_epochs": 5, "eval_every": 1}) == 1
        assert training.time_left(100, 4, 30.0) == "time left 3m40s (steps 1m40s + 4 evaluations x 30s)"
        assert training.time_left(100, 1, 3700.0) == "time left 1h03m (steps 1m40s + 1 evaluation x 1h01m)"
        assert training.time_left(100, 4, None) == "time left 1m40s + 4 evaluations (not timed yet)"
        assert training.time_left(100, 0, 30.0) == "time left 1m40s"


# ==== 16. train_graph.py: the loss, the optimizer update, the fused fair step ========================================


class TestTrainGraph:
    @pytest.mark.slow
    def test_fair_step_applies_exactly_the_mean_of_the_three_path_gradients(self):
        cfg = tiny_config(optimizer="sgd", learning_rate=0.05)
        cycle = fair.fair_cycle(3, 0)
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (2, 32, 48, 6)).astype(np.float32)
        y = rng.normal(0, 2, (2, 32, 48, 2)).astype(np.float32)
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.set_random_seed(5)
            images = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 6])
            flows = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 2])
            step = train_graph.build_train_step(cfg, images, flows, total_steps=10)
            trainable = {v.op.name: v for v in tf.compat.v1.trainable_variables()}
            init = tf.compat.v1.global_variables_initializer()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(init)
            before = sess.run(trainable)
            sess.run(step["train_op"], {images: x, flows: y, step["arch_paths"]: cycle})
            after = sess.run(trainable)
            for column, block in ((0, "EB0"), (-1, "H2Out")):  # a block reading the images, a routed one
                unfair = np.array(cycle)
                unfair[:, column] = [0, 0, 1]  # option 2 given to no path: refused before any update
                with pytest.raises(tf.errors.InvalidArgumentError, match=f"block {block} must give every option"):
                    sess.run(step["train_op"], {images: x, flows: y, step["arch_paths"]: unfair})
                assert all(np.array_equal(value, after[name]) for name, value in sess.run(trainable).items())

        # Independently: each path alone, static form, its own gradient, then the plain mean.
        mean_grad = {name: np.zeros_like(value) for name, value in before.items()}
        for arch in cycle:
            g = tf.Graph()
            with g.as_default():
                im = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 6])
                fl = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 2])
                predicted = supernet.build_flows(im, arch, mode="train")
                loss = train_graph.multiscale_loss(predicted, fl, cfg["loss_weights"])
                own = {v.op.name: v for v in tf.compat.v1.trainable_variables()}
                grads = dict(zip(own, tf.gradients(loss, list(own.values()))))
            with tf.compat.v1.Session(graph=g) as sess:
                for name, v in own.items():
                    set_variable(sess, v, before[name])
                for name, value in sess.run(grads, {im: x, fl: y}).items():
                    mean_grad[name] += value / 3
        for name in before:
            applied = (before[name] - after[name]) / cfg["learning_rate"]
            np.testing.assert_allclose(applied, mean_grad[name], rtol=2e-3, atol=2e-6, err_msg=name)
        # Every option of every block was used by one path, so every head option moved.
        heads = [n for n in before if any(f"/k{k}/" in n for k in supernet.SPACE.by_name['H1'].options)]
        assert len(heads) == 5 * 3 + 2 * 3 * 2 and all(np.abs(before[n] - after[n]).max() > 0 for n in heads)

    def test_learning_rate_follows_a_cosine_to_zero(self):
        graph = tf.Graph()
        with graph.as_default():
            step = tf.compat.v1.placeholder(tf.int64, [])
            lr = train_graph.cosine_learning_rate({"learning_rate": 1e-3}, step, 100)
        with tf.compat.v1.Session(graph=graph) as sess:
            values = [sess.run(lr, {step: s}) for s in (0, 50, 100, 150)]
        np.testing.assert_allclose(values, [1e-3, 5e-4, 0.0, 0.0], atol=1e-9)

    def test_multiscale_loss_matches_numpy(self):
        rng = np.random.default_rng(2)
        gt = rng.normal(0, 3, (2, 16, 24, 2)).astype(np.float32)
        preds = [rng.normal(0, 3, (2, 16 // s, 24 // s, 2)).astype(np.float32) for s in (4, 2, 1)]
        graph = tf.Graph()
        with graph.as_default():
            loss = train_graph.multiscale_loss([tf.constant(p) for p in preds], tf.constant(gt), [0.125, 0.25, 0.5])
        with tf.compat.v1.Session(graph=graph) as sess:
            value = sess.run(loss)

        def area(x, s):  # average of each s x s block: what an area resize does for an exact factor
            return x.reshape(2, 16 // s, s, 24 // s, s, 2).mean(axis=(2, 4))

        expected = sum(w * np.abs(p - area(gt, s)).mean() for p, s, w in zip(preds, (4, 2, 1), (0.125, 0.25, 0.5)))
        assert value == pytest.approx(expected, rel=1e-5)


def _distill_graph(cfg):
    """A graph with the fair step's terms (train_graph.fair_step_terms) on fed images, labels and
    cycle, and, built apart in the static form on the same variables, each path's flows and the
    largest path's: (graph, images, flows, arch_paths, terms, static flows {arch: flows})."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(3)
        images = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 6])
        flows = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 2])
        arch_paths = train_graph.arch_paths_placeholder()
        terms = train_graph.fair_step_terms(cfg, images, flows, arch_paths)
    return graph, images, flows, arch_paths, terms


def _teacher_tensors(graph):
    """The float outputs of the teacher's forward pass, up to (not including) its stop_gradient."""
    return [t for op in graph.get_operations() if op.name.startswith("teacher/") and op.type != "StopGradient"
            for t in op.outputs if t.dtype == tf.float32]


class TestDistillation:
    @pytest.mark.slow
    def test_the_term_on_one_batch_matches_a_numpy_computation(self):
        cfg = tiny_config(distill_weight=0.7)
        rng = np.random.default_rng(1)
        x = rng.uniform(-1, 1, (2, 32, 48, 6)).astype(np.float32)
        y = rng.normal(0, 2, (2, 32, 48, 2)).astype(np.float32)
        graph, images, flows, arch_paths, terms = _distill_graph(cfg)
        largest = (2,) * 9
        deepest_widest = tuple(len(layer.options) - 1 for layer in supernet.SPACE.layers if layer.options)
        assert train_graph.largest_arch() == largest == deepest_widest
        cycles = [fair.fair_cycle(3, 0), [supernet.uniform_arch(k) for k in range(3)]]  # the 2nd holds the teacher
        with graph.as_default():
            static = {arch: supernet.build_flows(images, arch, mode="train") for cycle in cycles for arch in cycle}
            static[largest] = supernet.build_flows(images, largest, mode="train")
            gt_losses = {arch: train_graph.multiscale_loss(arch_flows, flows, cfg["loss_weights"])
                         for arch, arch_flows in static.items()}
            init = tf.compat.v1.global_variables_initializer()
        with tf.compat.v1.Session(graph=graph, config=tensorflow_quiet.session_config()) as sess:
            sess.run(init)
            predicted, gt = sess.run([static, gt_losses], {images: x, flows: y})
            for cycle in cycles:
                got = sess.run(terms, {images: x, flows: y, arch_paths: np.array(cycle, np.int32)})
                by_hand = [0.0 if arch == largest else cfg["distill_weight"] * sum(
                    wt * np.mean(np.abs(student.astype(np.float64) - teacher))
                    for wt, student, teacher in zip(cfg["loss_weights"], predicted[arch], predicted[largest]))
                    for arch in cycle]
                assert min(by_hand[:2]) > 0.01  # the paths differ from the teacher: a term worth checking
                assert got["distill"] == pytest.approx(np.mean(by_hand), abs=1e-5)
                assert got["loss"] == pytest.approx(np.mean([gt[a] for a in cycle]) + np.mean(by_hand), abs=1e-5)

    @pytest.mark.slow
    def test_no_gradient_reaches_the_teacher(self):
        cfg = tiny_config(distill_weight=0.5)
        graph, images, flows, arch_paths, terms = _distill_graph(cfg)
        with graph.as_default():
            teacher = _teacher_tensors(graph)
            assert len(teacher) > 50  # the whole forward pass of the largest subnet
            for name in ("distill", "loss"):
                assert all(g is None for g in tf.gradients(terms[name], teacher)), name
        # The same through the pieces: the term's gradient on every variable is what it is when the
        # teacher's flows are constants fed in (a gradient through the teacher would add to option 2's).
        cycle = np.array(fair.fair_cycle(5, 1), np.int32)
        rng = np.random.default_rng(2)
        x = rng.uniform(-1, 1, (2, 32, 48, 6)).astype(np.float32)
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.set_random_seed(3)
            images = tf.compat.v1.placeholder(tf.float32, [2, 32, 48, 6])
            arch_paths = train_graph.arch_paths_placeholder()
            students = train_graph.fair_cycle_flows(images, arch_paths)
            teacher = train_graph.largest_path_flows(images)
            fixed = [tf.compat.v1.placeholder(tf.float32, t.shape) for t in teacher]
            variables = tf.compat.v1.trainable_variables()
            terms = [train_graph.distillation_terms(cfg, students, targets, arch_paths)
                     for targets in (teacher, fixed)]
            grads = [tf.gradients(tf.add_n(each), variables) for each in terms]
            init = tf.compat.v1.global_variables_initializer()
        with tf.compat.v1.Session(graph=graph, config=tensorflow_quiet.session_config()) as sess:
            sess.run(init)
            teacher_np = sess.run(teacher, {images: x})
            through, constant = sess.run(grads, {images: x, arch_paths: cycle, **dict(zip(fixed, teacher_np))})
            # a path that is the largest subnet is the teacher: no term, even where its flows and the
            # teacher's differ (as they may in the last bits when the paths run on other devices)
            moved = {f: t + 0.5 for f, t in zip(fixed, teacher_np)}
            uniform = np.array([supernet.uniform_arch(k) for k in range(3)], np.int32)
            own = sess.run(terms[1], {images: x, arch_paths: uniform, **moved})
            assert own[2] == 0 and min(own[:2]) > 0
        touched = 0
        for variable, a, b in zip(variables, through, constant):
            assert (a is None) == (b is None), variable.op.name
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=variable.op.name)
                touched += bool(np.any(a))
        assert touched > 20  # the paths do learn from the term

    @pytest.mark.slow
    def test_off_builds_nothing_of_it(self):
        for weight, built in ((0.0, False), (0.5, True)):
            graph, *_, terms = _distill_graph(tiny_config(distill_weight=weight))
            assert bool(_teacher_tensors(graph)) == built and ("distill" in terms) == built

    def test_the_weight_is_checked_and_refused_for_a_standalone_run(self, tmp_path, capsys):
        for flags, words in ((["--distill_weight", "-0.1"], "'distill_weight' must be >= 0"),
                             (["--distill_weight", "0.5", "--arch", "0,0,0,0,0,0,0,0,0"], "supernet runs only")):
            assert train.main(["--dry_run", "--output_dir", str(tmp_path)] + flags) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and words in err[0]
        (tmp_path / "old").mkdir()
        saved = {k: v for k, v in tiny_config().items() if k != "distill_weight"}  # a run made before the key
        (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
        assert config.run_config(str(tmp_path / "old"))["distill_weight"] == 0.0

    @pytest.mark.slow
    def test_a_tiny_distillation_run_keeps_fairness_counts_exact(self, tmp_path):
        assert train.main(RUN_FLAGS + ["--output_dir", str(tmp_path), "--experiment_name", "d", "--num_epochs", "2",
                                       "--distill_weight", "0.5"]) == 0
        run = tmp_path / "d"
        report = json.loads((run / "train_report.json").read_text())
        counts = json.loads((run / "fairness_counts.json").read_text())
        assert report["fairness_counts"] == counts["counts"] == fair.counts_for_steps(9, 0, 4)
        assert report["final_fairness_gap"] == counts["fairness_gap"] == 0
        assert all(n == 4 for block in counts["counts"].values() for n in block.values())  # 4 steps: once each
        assert json.loads((run / "config.json").read_text())["distill_weight"] == 0.5
        log = (run / "train.log").read_text()
        assert "distillation: weight 0.5" in log
        terms = [float(v) for v in re.findall(r"\(distillation ([0-9.]+)\)", log)]
        assert len(terms) == 4 and min(terms) > 0


# ==== 17. run_files.py: what a run writes ============================================================================


class TestRunFiles:
    @pytest.mark.slow
    def test_a_run_writes_every_artifact(self, tiny_runs):
        out = tiny_runs
        run = out / "whole"
        for name in ("config.json", "train.log", "eval_pool_3.json", "eval_history.csv", "fairness_counts.json",
                     "train_report.json", "checkpoints/best/meta.json", "checkpoints/last/meta.json"):
            assert (run / name).is_file(), name
        assert list((run / "tb").glob("events.out.tfevents.*"))
        report = json.loads((run / "train_report.json").read_text())
        assert report["epochs_finished"] == 2 and report["stop_reason"] == "completed"
        assert report["final_fairness_gap"] == 0 and report["eval_pool_coverage_ok"]
        assert report["data_source"] == "synthetic"
        meta = json.loads((run / "checkpoints/last/meta.json").read_text())
        assert meta["global_step"] == 4 and meta["epoch"] == 2 and meta["config"]["input_h"] == 32
        rows = _history(run / "eval_history.csv")
        assert [int(r["epoch"]) for r in rows] == [1, 2]
        assert float(rows[0]["best_epe"]) == pytest.approx(min(float(r["mean_epe"]) for r in rows[:1]))
        log = (run / "train.log").read_text()
        assert "steps/s" in log and "time left" in log and "synthetic data" in log

    def test_trim_history_drops_only_rows_after_the_checkpoint(self, tmp_path):
        path = tmp_path / "eval_history.csv"
        path.write_text("epoch,mean_epe\n1,3.0\n2,2.5\n3,2.4\n")
        run_files.trim_history(str(path), 2, ["epoch", "mean_epe"])
        assert path.read_text().splitlines() == ["epoch,mean_epe", "1,3.0", "2,2.5"]


# ==== 18. distribute.py: data-parallel training ======================================================================


DIST_FLAGS = ["--synthetic", "--input_h", "32", "--input_w", "48", "--synthetic_train_size", "8",
              "--synthetic_val_size", "4", "--batch_size", "4", "--steps_per_epoch", "2", "--fast_mode",
              "--log_every", "1", "--seed", "9", "--optimizer", "sgd", "--learning_rate", "0.05"]


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def start_workers(out, name, flags, ports):
    """train.py once per worker of a loopback cluster on `ports`; [Popen] by worker index."""
    command = [sys.executable, "train.py", *DIST_FLAGS, "--distribute", "multi_worker", "--output_dir", str(out),
               "--experiment_name", name, *flags]
    return [subprocess.Popen(command, cwd=HERE, env=dict(user_env(), TF_CONFIG=tf_config(ports, i)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(len(ports))]


def finish_workers(procs, timeout=900):
    """[(stdout, stderr, exit code)] of the workers, each killed if still running after `timeout`."""
    results = []
    for proc in procs:
        try:
            results.append(proc.communicate(timeout=timeout) + (proc.returncode,))
        except subprocess.TimeoutExpired:
            proc.kill()
            results.append(proc.communicate() + ("timeout",))
    return results


def digests(text):
    """{step: variables digest} of a worker's log lines."""
    return {int(m[1]): m[2] for m in re.finditer(r"step (\d+): variables digest ([0-9a-f]{16})", text)}


def checkpoint_digest(prefix):
    """distribute.variables_digest's formula over a checkpoint's variables."""
    reader = tf.train.load_checkpoint(prefix)
    digest = hashlib.sha256()
    for name in sorted(reader.get_variable_to_shape_map()):
        digest.update(name.encode() + np.ascontiguousarray(reader.get_tensor(name)).tobytes())
    return digest.hexdigest()[:16]


def mean_gradient_steps(cfg, start_prefix, steps, replicas):
    """The trainable variables after `steps` from checkpoint `start_prefix`, each step computed by
    one process as the data-parallel step should: every share's gradient alone, their mean, the
    global-norm clip, one SGD update at the cosine rate. {name: value}."""
    data = data_fc2.open_data(cfg)
    graph = tf.Graph()
    with graph.as_default():
        h, w = cfg["input_h"], cfg["input_w"]
        images = tf.compat.v1.placeholder(tf.float32, [None, h, w, 6])
        flows = tf.compat.v1.placeholder(tf.float32, [None, h, w, 2])
        arch_paths = train_graph.arch_paths_placeholder()
        data_loss = train_graph.fair_step_loss(cfg, images, flows, arch_paths)
        variables = tf.compat.v1.trainable_variables()
        kernels = [v for v in variables if v.op.name.endswith("/kernel")]
        loss = data_loss + cfg["weight_decay"] * tf.add_n([tf.nn.l2_loss(k) for k in kernels])
        grads = tf.gradients(loss, variables)
        step = tf.compat.v1.train.get_or_create_global_step()
        lr = train_graph.cosine_learning_rate(cfg, step, cfg["steps_per_epoch"] * cfg["num_epochs"])
        fed = [tf.compat.v1.placeholder(tf.float32, v.shape) for v in variables]
        apply = tf.compat.v1.train.GradientDescentOptimizer(lr).apply_gradients(zip(fed, variables), step)
        batch = tf.compat.v1.data.make_one_shot_iterator(fc2_pipeline.make_dataset(
            data["train"], cfg["batch_size"], (h, w), True, cfg["max_flow"], cfg["seed"], steps[0])).get_next()
        saver = tf.compat.v1.train.Saver([v for v in tf.compat.v1.global_variables()])
    with tf.compat.v1.Session(graph=graph, config=tensorflow_quiet.session_config()) as sess:
        saver.restore(sess, start_prefix)
        for s in steps:
            whole_images, whole_flows = sess.run(batch)
            shares = np.split(np.arange(len(whole_images)), replicas)
            parts = [sess.run(grads, {images: whole_images[i], flows: whole_flows[i],
                                      arch_paths: fair.fair_cycle(cfg["seed"], s)}) for i in shares]
            mean = [np.mean(g, axis=0) for g in zip(*parts)]
            norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in mean))
            scale = min(1.0, cfg["grad_clip_norm"] / norm) if cfg["grad_clip_norm"] > 0 else 1.0
            sess.run(apply, dict(zip(fed, [g * np.float32(scale) for g in mean])))
        return {v.op.name: value for v, value in zip(variables, sess.run(variables))}


class TestDataParallel:
    """--distribute: the TF_CONFIG checks, the shards of a batch, two workers on loopback ports."""

    @pytest.mark.parametrize("text, field", [
        ("{not json", "not valid JSON"), ('{"cluster": {"chief": ["a:1"]}, "task": {}}', "field 'cluster'"),
        ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}', "an address twice"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "field 'cluster.worker'"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "field 'task'")])
    def test_a_bad_tf_config_is_one_line_naming_the_field(self, tmp_path, capsys, monkeypatch, text, field):
        monkeypatch.setenv("TF_CONFIG", text)
        flags = ["--distribute", "multi_worker", "--experiment_name", "x", "--dry_run", "--output_dir", str(tmp_path)]
        assert train.main(flags) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: TF_CONFIG") and field in err and err.count("\n") == 1

    def test_a_port_in_use_a_batch_that_does_not_divide_and_a_nameless_run_are_refused_first(
            self, tmp_path, capsys, monkeypatch):
        flags = ["--distribute", "multi_worker", "--experiment_name", "x", "--dry_run", "--output_dir", str(tmp_path)]
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            monkeypatch.setenv("TF_CONFIG", tf_config([port, distribute.free_ports(1)[0]], 0))
            assert train.main(flags) == 1
        assert f"127.0.0.1:{port}: port {port} cannot be listened on" in capsys.readouterr().err
        monkeypatch.setenv("TF_CONFIG", tf_config(distribute.free_ports(2), 1))
        assert train.main(flags + ["--batch_size", "3"]) == 1
        assert "--batch_size 3 (the global batch) does not divide over 2 replicas" in capsys.readouterr().err
        assert train.main(flags[:2] + ["--dry_run", "--output_dir", str(tmp_path)]) == 1
        assert "needs 'experiment_name'" in capsys.readouterr().err
        assert train.main(["--dry_run", "--output_dir", str(tmp_path)]) == 1  # worker 1 alone would write
        assert "set --distribute multi_worker, or unset TF_CONFIG" in capsys.readouterr().err
        assert not list(tmp_path.iterdir())

    def test_the_shards_of_a_training_batch_are_the_batch(self):
        arrays = synthetic.make_synthetic_arrays(6, 32, 48, 3)
        whole = next(iter(fc2_pipeline.make_dataset(arrays, 4, (24, 40), True, 100.0, 5, start_step=2)))
        for count in (2, 4):
            parts = [next(iter(fc2_pipeline.make_dataset(arrays, 4, (24, 40), True, 100.0, 5, start_step=2,
                                                         shard=(i, count)))) for i in range(count)]
            for k in range(2):
                np.testing.assert_array_equal(np.concatenate([p[k].numpy() for p in parts]), whole[k].numpy())

    @pytest.mark.slow
    def test_two_workers_hold_identical_weights_the_mean_gradient_update_and_resume(self, tmp_path):
        ports = distribute.free_ports(2)
        first = finish_workers(start_workers(tmp_path, "dp", ["--num_epochs", "1"], ports))
        assert [code for *_, code in first] == [0, 0], first
        run = tmp_path / "dp"
        start = json.loads((run / "checkpoints/last/meta.json").read_text())
        shutil.copytree(run / "checkpoints/last", tmp_path / "start")
        second = finish_workers(start_workers(tmp_path, "dp", ["--num_epochs", "2", "--resume"],
                                              distribute.free_ports(2)))
        assert [code for *_, code in second] == [0, 0], second
        meta = json.loads((run / "checkpoints/last/meta.json").read_text())
        assert start["global_step"] == 2 and meta["global_step"] == 4
        # every worker logs its digest at each commit: the same bytes, and those the chief saved
        chief, other = digests((run / "train.log").read_text()), digests(first[1][0] + second[1][0])
        assert set(chief) == {2, 4} and chief == other
        prefix = str(run / "checkpoints/last" / meta["checkpoint"])
        assert chief[4] == checkpoint_digest(prefix)
        assert not list(tmp_path.glob("*/worker*")) and "worker 1:" not in (run / "train.log").read_text()
        # the same two steps by one process from the chief's first checkpoint: mean of the shares' gradients
        cfg = dict(json.loads((run / "config.json").read_text()), num_epochs=2)
        expected = mean_gradient_steps(cfg, str(tmp_path / "start" / start["checkpoint"]), [2, 3], 2)
        reader = tf.train.load_checkpoint(prefix)
        begin = tf.train.load_checkpoint(str(tmp_path / "start" / start["checkpoint"]))
        moved = 0
        for name, value in expected.items():
            update, want = reader.get_tensor(name) - begin.get_tensor(name), value - begin.get_tensor(name)
            scale = max(np.abs(want).max(), 1e-12)
            np.testing.assert_allclose(update, want, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
            moved += scale > 1e-6
        assert moved > len(expected) // 2
        assert meta["fairness_counts"] == fair.counts_for_steps(9, 0, 4)
        assert fair.fairness_gap(meta["fairness_counts"]) == 0
        report = json.loads((run / "train_report.json").read_text())
        assert report["data_parallel"]["replicas"] == 2 and report["global_step"] == 4

    @pytest.mark.slow
    def test_a_killed_worker_stops_the_other_in_one_line_and_the_run_resumes_alone(self, tmp_path):
        procs = start_workers(tmp_path, "kill", ["--num_epochs", "3", "--worker_timeout_s", "20"],
                              distribute.free_ports(2))
        log = tmp_path / "kill" / "train.log"
        deadline = time.time() + 600
        while "step 2: variables digest" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
            time.sleep(0.5)
        procs[1].kill()
        killed = time.time()
        (stdout, stderr, code), _ = finish_workers(procs, timeout=120)
        assert code == 1 and time.time() - killed < 20 + 60, stderr
        assert stderr.count("\n") == 1 and stderr.startswith("error: worker 0: worker 1 (127.0.0.1:"), stderr
        assert "is gone at step" in stderr and "rerun them all with --resume" in stderr
        assert json.loads((tmp_path / "kill/checkpoints/last/meta.json").read_text())["global_step"] == 2
        # resumed by one process (another number of workers): from step 2 to the end
        alone = subprocess.run([sys.executable, "train.py", *DIST_FLAGS, "--output_dir", str(tmp_path),
                                "--resume_experiment_name", "kill", "--distribute", "none", "--num_epochs", "3"],
                               cwd=HERE, env=user_env(), capture_output=True, text=True, timeout=600)
        assert alone.returncode == 0, alone.stderr
        meta = json.loads((tmp_path / "kill/checkpoints/last/meta.json").read_text())
        assert meta["global_step"] == 6 and meta["fairness_counts"] == fair.counts_for_steps(9, 0, 6)
        assert "restored epoch 1, step 2" in alone.stdout


# ==== 19. evaluate.py: a checkpoint scored on FC2, Sintel or KITTI ===================================================


@pytest.fixture(scope="module")
def scoring_run(tmp_path_factory):
    """A run folder (32x48, synthetic) with a `best` checkpoint of freshly initialised weights."""
    out = tmp_path_factory.mktemp("scoring_runs")
    run = out / "run"
    run.mkdir()
    cfg = dict(config.read_config_file(config.DEFAULT_CONFIG), input_h=32, input_w=48, synthetic=True,
               synthetic_train_size=4, synthetic_val_size=4, batch_size=2, bn_recal_batches=1, eval_pool_size=3,
               experiment_name="run", output_dir=str(out))
    atomic_files.write_json_atomic(str(run / "config.json"), cfg)
    pool = [supernet.format_arch(a) for a in fair.build_eval_pool(3, cfg["seed"], 32, 48)]
    atomic_files.write_json_atomic(str(run / "eval_pool_3.json"), {"archs": pool})
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(3)
        scoring.build_scorer(tf.compat.v1.placeholder(tf.float32, [None, 32, 48, 6]),
                              tf.compat.v1.placeholder(tf.float32, [None, 32, 48, 2]))
        saver = tf.compat.v1.train.Saver(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        ckpt.save(sess, saver, str(run), "best",
                  {"epoch": 1, "global_step": 0, "search_space": ckpt.search_space_signature(32, 48)})
    return out


SCORED_ARCH = "0,1,2,0,1,2,0,1,2"


class TestEvaluate:
    @pytest.mark.slow
    def test_evaluate_cli_writes_the_result_json(self, tiny_runs):
        out = tiny_runs
        assert evaluate.main(["--output_dir", str(out), "--experiment_name", "whole", "--checkpoint_type", "last",
                              "--bn_recal_batches", "2", "--batch_size", "2"]) == 0
        result = json.loads((out / "whole" / "supernet_eval_result_last.json").read_text())
        rows, summary = result["archs"], result["summary"]
        assert [r["rank"] for r in rows] == [1, 2, 3] and [r["epe"] for r in rows] == sorted(r["epe"] for r in rows)
        assert summary["mean_epe"] == pytest.approx(np.mean([r["epe"] for r in rows]))
        assert summary["data_source"] == "synthetic" and summary["coverage_ok"] and summary["bn_recal_batches"] == 2
        for r in rows:
            arch = supernet.parse_arch(r["arch"])
            assert r["params"] == supernet.count_params(arch, 32, 48) and 0 <= r["px1"] <= r["px3"] <= r["px5"] <= 1

    @pytest.mark.slow
    def test_sintel_full_frames_scored_at_a_size_that_is_not_the_training_size(self, scoring_run, tmp_path):
        written = _write_sintel(tmp_path / "sintel", {"cave_2": 3, "alley_1": 2})
        run = scoring_run / "run"
        assert evaluate.main(["--output_dir", str(scoring_run), "--experiment_name", "run", "--dataset", "sintel",
                              "--base_path", str(tmp_path / "sintel"), "--sintel_pass", "clean", "--arch", SCORED_ARCH,
                              "--visualize", "1", "--save_flow", str(tmp_path / "pred")]) == 0
        summary, rows = (lambda r: (r["summary"], r["archs"]))(
            json.loads((run / "supernet_eval_result_best_sintel_clean.json").read_text()))
        assert (summary["dataset"], summary["pass"], summary["val_samples"]) == ("sintel", "clean", 3)
        assert summary["input_sizes"] == [[40, 52]] and summary["frame_sizes"] == [[38, 50]]
        assert summary["recal_input_size"] == [32, 48] and summary["recal_data_source"] == "synthetic"
        assert not summary["archs_are_eval_pool"] and "coverage_ok" not in summary
        saved = {key: flowio.read_flo(str(tmp_path / "pred" / "012012012" / key[0] / f"frame_{key[1]:04d}.flo"))
                 for key in written}
        assert all(s.shape == (38, 50, 2) for s in saved.values())  # the padding removed
        hand = _hand_metrics([(saved[k], written[k][2], np.ones((38, 50))) for k in written])
        for key, value in hand.items():
            assert rows[0][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        assert summary["zero_flow_epe"] == pytest.approx(
            _hand_metrics([(0 * w[2], w[2], np.ones((38, 50))) for w in written.values()])["epe"], rel=1e-5)
        pictures = list((run / "flow_pictures_best_sintel_clean").iterdir())
        assert [p.name for p in pictures] == ["alley_1_frame_0001_arch012012012.png"]
        assert pictures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    @pytest.mark.slow
    def test_kitti_frames_of_two_sizes_scored_over_valid_pixels(self, scoring_run, tmp_path):
        truth = _write_kitti(tmp_path / "kitti", [(37, 50), (32, 44), (38, 49)])
        run = scoring_run / "run"
        others = [run / f"supernet_eval_result_best{suffix}.json" for suffix in ("", "_sintel_final", "_fc2")]
        for other in others:
            other.write_text(f'{{"{other.name}": 1}}\n')
        assert evaluate.main(["--output_dir", str(scoring_run), "--experiment_name", "run", "--dataset", "kitti",
                              "--base_path", str(tmp_path / "kitti"), "--arch", SCORED_ARCH,
                              "--save_flow", str(tmp_path / "pred")]) == 0
        summary, rows = (lambda r: (r["summary"], r["archs"]))(
            json.loads((run / "supernet_eval_result_best_kitti.json").read_text()))
        assert summary["input_sizes"] == [[32, 44], [40, 52]] and summary["val_samples"] == 3
        assert summary["dataset"] == "kitti" and summary["data_source"] == "kitti"
        saved = {name: flowio.read_flo(str(tmp_path / "pred" / "012012012" / f"{name}.flo")) for name in truth}
        hand = _hand_metrics([(saved[n], *truth[n]) for n in truth])
        for key, value in hand.items():
            assert rows[0][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        by_hand = _hand_metrics([(0 * f, f, v) for f, v in truth.values()])
        assert summary["zero_flow_epe"] == pytest.approx(by_hand["epe"])
        for other in others:  # another dataset's result is never overwritten
            assert other.read_text() == f'{{"{other.name}": 1}}\n'

    @pytest.mark.slow
    @pytest.mark.parametrize("case", ["missing_flow", "kitti_8_bit", "kitti_wrong_size"])
    def test_bad_dataset_files_are_one_line_errors_naming_the_file(self, scoring_run, tmp_path, capsys, case):
        if case == "missing_flow":
            _write_sintel(tmp_path, {"cave_2": 3})
            bad = tmp_path / "training" / "flow" / "cave_2" / "frame_0002.flo"
            bad.unlink()
            flags = ["--dataset", "sintel", "--sintel_pass", "clean"]
        else:
            _write_kitti(tmp_path, [(6, 8)])
            bad = tmp_path / "training" / "flow_occ" / "000000_10.png"
            if case == "kitti_8_bit":
                bad.write_bytes(tf.io.encode_png(np.zeros((6, 8, 3), np.uint8)).numpy())
            else:
                bad.write_bytes(_png16_bytes(np.zeros((6, 9, 3), np.int64)))
            flags = ["--dataset", "kitti"]
        code, err = _run_main(evaluate.main, ["--output_dir", str(scoring_run), "--experiment_name", "run",
                                              "--base_path", str(tmp_path)] + flags, capsys)
        assert code == 1 and len(err) == 1 and err[0].startswith("error:") and str(bad) in err[0], err
        assert {"missing_flow": "missing", "kitti_8_bit": "16-bit", "kitti_wrong_size": "differs"}[case] in err[0]

    @pytest.mark.slow
    def test_unknown_dataset_is_refused(self, scoring_run, capsys):
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main(["--output_dir", str(scoring_run), "--experiment_name", "run", "--dataset", "chairs"])
        assert exit_info.value.code == 2 and "invalid choice: 'chairs'" in capsys.readouterr().err
        with pytest.raises(errors.DataError, match="--dataset 'chairs'"):
            batches.dataset_batches({}, dataset="chairs", base_path=None, sintel_pass="final")


# ==== 20. runs.py: a trained run as scoring commands see it ==========================================================


class TestRunsPool:
    @pytest.mark.slow
    def test_pool_coverage_only_for_the_run_pool(self, scoring_run):
        run = scoring_run / "run"
        cfg = json.loads((run / "config.json").read_text())
        pool = json.loads((run / "eval_pool_3.json").read_text())["archs"]
        assert runs.chosen_archs(list(reversed(pool)), str(run), cfg)[1]
        assert not runs.chosen_archs(pool[:2], str(run), cfg)[1]


# ==== 21. flowviz.py: the Middlebury flow colours and the flow panels ================================================


class TestFlowviz:
    def test_colour_wheel_against_its_defining_colours(self):
        wheel = flowviz.make_colorwheel()
        assert wheel.shape == (55, 3)  # RY 15, YG 6, GC 4, CB 11, BM 13, MR 6 (Baker et al.)
        defining = {0: (255, 0, 0), 15: (255, 255, 0), 21: (0, 255, 0), 25: (0, 255, 255), 36: (0, 0, 255),
                    49: (255, 0, 255)}
        for row, colour in defining.items():
            assert tuple(wheel[row]) == colour, row
        flows = np.array([[[1, 0], [-1, 0], [0, -1], [0, 1], [0, 0]]], np.float32)  # right, left, up, down, still
        colours = flowviz.flow_to_color(flows, max_radius=1.0)[0].astype(int)
        assert tuple(colours[0]) == (255, 0, 0)                                     # right: red
        assert tuple(colours[1]) == (0, 255 - int(255 * 2 / 11), 255)                # left: row 27, cyan-blue
        np.testing.assert_allclose(colours[2], ((78 + 98) / 2, 0, 255), atol=1)     # up: rows 40/41, blue-violet
        np.testing.assert_allclose(colours[3], (255, (221 + 238) / 2, 0), atol=1)   # down: rows 13/14, yellow
        assert tuple(colours[4]) == (255, 255, 255)                                 # no motion: white
        half = flowviz.flow_to_color(flows * 0.5, max_radius=1.0)[0].astype(int)   # half length: half saturation
        np.testing.assert_allclose(half[0], (255, 127, 127), atol=1)
        dark = flowviz.flow_to_color(flows * 2, max_radius=1.0)[0].astype(int)     # beyond the radius: 75 %
        np.testing.assert_allclose(dark[0], (191, 0, 0), atol=1)

    def test_tensorboard_flow_panel_of_the_best_arch(self, tmp_path):
        rng = np.random.default_rng(2)
        flows = rng.normal(0, 2, (1, 16, 24, 2)).astype(np.float32)
        batch = (rng.uniform(-1, 1, (1, 16, 24, 6)).astype(np.float32), flows)
        result = {"archs": [{"arch": "0,0,0,0,0,0,0,0,0", "epe": 2.0}, {"arch": "1,1,1,1,1,1,1,1,1", "epe": 1.0}],
                  "first_predictions": {"0,0,0,0,0,0,0,0,0": flows[0] * 0, "1,1,1,1,1,1,1,1,1": flows[0]}}
        png, height, width = flowviz.best_arch_panel(result, [batch])
        with tf.Graph().as_default():
            writer = tf.compat.v1.summary.FileWriter(str(tmp_path))
            run_files.write_image(writer, 7, "eval/flow_best_arch", png, height, width)
            writer.close()
        events = [e for f in tmp_path.iterdir() for e in tf.compat.v1.train.summary_iterator(str(f))]
        images = [(e.step, v) for e in events for v in e.summary.value if v.tag == "eval/flow_best_arch"]
        assert len(images) == 1 and images[0][0] == 7
        decoded = tf.io.decode_png(images[0][1].image.encoded_image_string).numpy()
        assert decoded.shape[:2] == (height, width) and decoded.std() > 0


# ==== 22. search.py: many subnets scored with shared computation, in durable shards; fronts and budgets ==============


SEARCH_SIZE = (32, 48)


def _randomise_bn(graph):
    """Ops giving every BN gamma and beta random values: depth options then really differ (a fresh
    supernet's ResBlocks start as the identity) and each BN's scale matters."""
    with graph.as_default():
        return [v.assign(tf.random.uniform(v.shape, 0.5, 1.5, seed=i) if v.op.name.endswith("gamma")
                         else tf.random.normal(v.shape, 0.0, 0.2, seed=i))
                for i, v in enumerate(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
                if v.op.name.endswith(("gamma", "beta"))]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """A run folder made by hand: config, eval pool and a 'best' checkpoint of a supernet with random BN."""
    out = tmp_path_factory.mktemp("search_outputs")
    run_dir = out / "tiny"
    h, w = SEARCH_SIZE
    cfg = dict(config.read_config_file(config.DEFAULT_CONFIG), experiment_name="tiny", output_dir=str(out),
               synthetic=True, synthetic_train_size=8, synthetic_val_size=6, input_h=h, input_w=w, batch_size=2,
               bn_recal_batches=2, eval_batches=0, eval_pool_size=3)
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(cfg))
    pool = fair.build_eval_pool(3, cfg["seed"], h, w)
    (run_dir / "eval_pool_3.json").write_text(json.dumps({"archs": [supernet.format_arch(a) for a in pool]}))
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(5)
        supernet.build_flows(tf.compat.v1.placeholder(tf.float32, [None, h, w, 6]), tf.zeros([9], tf.int32),
                             "recal", 0)
        randomise = _randomise_bn(graph)
        saver = tf.compat.v1.train.Saver(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        sess.run(randomise)
        ckpt.save(sess, saver, str(run_dir), "best", {"global_step": 7, "epoch": 1, "config": cfg,
                                                      "search_space": ckpt.search_space_signature(h, w)})
    return out, run_dir


def _scores(path):
    with open(path, newline="") as f:
        return {r["arch"]: r for r in csv.DictReader(f)}


class TestSearchCommand:
    def test_another_recalibration_scores_into_its_own_folder(self, search_run, capsys):
        out, run_dir = search_run  # the run recalibrates on 2 batches
        common = ["--output_dir", str(out), "--experiment_name", "tiny", "--archs", "0,0,0,0,0,0,0,0,0"]
        plain = pathlib.Path(search.search_dir_for(str(run_dir), search.parse_args(common), ""))
        same = search.search_dir_for(str(run_dir), search.parse_args(common + ["--bn_recal_batches", "2"]), "")
        other = pathlib.Path(search.search_dir_for(str(run_dir), search.parse_args(common + ["--bn_recal_batches",
                                                                                             "3"]), ""))
        assert same == str(plain) and other.name == "search_best_bn_recal_batches3" + plain.name[len("search_best"):]
        assert search.main(common) == 0 and search.main(common + ["--bn_recal_batches", "3"]) == 0
        manifests = [json.loads(next(d.glob("part_*/manifest.json")).read_text()) for d in (plain, other)]
        assert [m["recal_batches"] for m in manifests] == [2, 3]
        firsts = [next(csv.DictReader((d / "scores.csv").read_text().splitlines())) for d in (plain, other)]
        epes = [float(row["epe"]) for row in firsts]
        assert epes[0] != epes[1]  # random BN: another recalibration gives another score

    @pytest.mark.slow
    def test_latency_table_adds_fps_its_front_and_a_budget(self, search_run, tmp_path, capsys):
        out, run_dir = search_run
        table = {"format": edge_tables.TABLE_FORMAT, "space_version": supernet.SPACE.version,
                 "accelerator_config": "ethos-u55-64", "system_config": "s",
                 "memory_mode": "m", "clock_hz": 1e6, "input_size": list(SEARCH_SIZE), "fixed_cycles": 1000,
                 "context_blocks": edge_tables.context_blocks(),
                 "block_cycles": {b: [[c] * 3 for c in (10 * i, 10 * i + 100, 10 * i + 300)]
                                  for i, b in enumerate(supernet.SPACE.blocks)}}
        (tmp_path / "table.json").write_text(json.dumps(table))
        archs = [(0,) * 9, (2,) * 9, (0, 0, 0, 0, 2, 0, 0, 0, 0), (1, 0, 2, 0, 1, 0, 2, 0, 1)]
        common = ["--output_dir", str(out), "--experiment_name", "tiny", "--archs"] + [supernet.format_arch(a)
                                                                                     for a in archs]
        assert search.main(common + ["--latency_table", str(tmp_path / "table.json"), "--min_fps", "700"]) == 0
        search_dir = pathlib.Path(search.search_dir_for(str(run_dir), search.parse_args(common), ""))
        rows = _scores(search_dir / "scores.csv")
        for arch in archs:  # cycles = fixed + each block's option cost, by hand
            cycles = 1000 + sum(10 * i + (0, 100, 300)[o] for i, o in enumerate(arch))
            assert float(rows[supernet.format_arch(arch)]["fps"]) == pytest.approx(1e6 / cycles)
        fast = [r for r in rows.values() if float(r["fps"]) >= 700]
        best = min(fast, key=lambda r: float(r["epe"]))
        assert f"lowest EPE: {best['arch']} (EPE " in capsys.readouterr().out
        front = json.loads((search_dir / "pareto.json").read_text())["fronts"]["epe_fps"]
        assert front[0]["arch"] == "0,0,0,0,0,0,0,0,0" and all(r["arch"] in rows for r in front)
        table["input_size"] = [64, 96]
        (tmp_path / "table.json").write_text(json.dumps(table))
        assert search.main(common + ["--merge", "--latency_table", str(tmp_path / "table.json")]) == 1
        assert "was made at input size [64, 96], the run is 32x48" in capsys.readouterr().err

    @pytest.mark.slow
    @pytest.mark.parametrize("flags, words", [
        (["--archs", "0,1,2,0,1,2,0,1"], "--archs: arch code '0,1,2,0,1,2,0,1' has 8 fields"),
        (["--archs_file", "BAD"], "line 3: arch code '0,1,3,0,0,0,0,0,0': field 2 (DB0) is '3'"),
        (["--shard", "3/2"], "--shard 3/2: K must be in 1..N"),
        (["--shard", "0/2"], "--shard 0/2: K must be in 1..N"),
        (["--shard", "x"], "--shard 'x' must be K/N"),
        (["--checkpoint_type", "last"], "'last' checkpoint meta not found"),
        (["--sample", "0"], "--sample 0 is outside 1..19683"),
    ])
    def test_bad_input_is_one_line_and_loses_nothing(self, search_run, tmp_path, capsys, flags, words):
        out, run_dir = search_run
        (tmp_path / "bad.txt").write_text("0,0,0,0,0,0,0,0,0\n\n0,1,3,0,0,0,0,0,0\n")
        flags = [str(tmp_path / "bad.txt") if f == "BAD" else f for f in flags]
        before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        assert search.main(["--output_dir", str(out), "--experiment_name", "tiny"] + flags) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
        assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    @pytest.mark.slow
    def test_a_standalone_run_is_refused(self, search_run, tmp_path, capsys):
        out, run_dir = search_run
        shutil.copytree(run_dir, tmp_path / "alone")
        cfg = json.loads((tmp_path / "alone" / "config.json").read_text())
        (tmp_path / "alone" / "config.json").write_text(json.dumps(dict(cfg, arch="0,1,2,0,1,2,0,1,2")))
        assert search.main(["--output_dir", str(tmp_path), "--experiment_name", "alone"]) == 1
        assert "is a standalone run of 0,1,2,0,1,2,0,1,2: search needs a supernet run" in capsys.readouterr().err


class TestSearchShardsAndResume:
    @pytest.mark.slow
    def test_shards_merge_into_the_single_process_result(self, search_run, capsys, monkeypatch):
        out, run_dir = search_run
        common = ["--output_dir", str(out), "--experiment_name", "tiny", "--archs_file", str(out / "archs.txt")]
        archs = [(0,) * 9, (2,) * 9] + supernet.random_archs(40, 4) + [(1, 1, 1, 1, o, 0, 2, 1, 0) for o in range(3)]
        (out / "archs.txt").write_text("# chosen\n" + "\n".join(supernet.format_arch(a) for a in archs) + "\n\n")
        assert search.main(common) == 0
        search_dir = search.search_dir_for(str(run_dir), search.parse_args(common), "")
        single = (pathlib.Path(search_dir) / "scores.csv").read_bytes()
        shutil.rmtree(search_dir)
        assert search.main(common + ["--shard", "2/2"]) == 0 and search.main(common + ["--shard", "1/2"]) == 0
        assert not (pathlib.Path(search_dir) / "scores.csv").exists()
        def no_data(*_, **__):
            raise AssertionError("--merge read the data")
        monkeypatch.setattr(batches, "dataset_batches", no_data)
        assert search.main(common + ["--merge", "--max_gmacs", "0.1"]) == 0
        assert (pathlib.Path(search_dir) / "scores.csv").read_bytes() == single
        rows = _scores(pathlib.Path(search_dir) / "scores.csv")
        assert set(rows) == {supernet.format_arch(a) for a in archs}
        assert [float(r["epe"]) for r in rows.values()] == sorted(float(r["epe"]) for r in rows.values())
        for code, r in rows.items():
            assert int(r["params"]) == supernet.count_params(supernet.parse_arch(code), *SEARCH_SIZE)
        pareto = json.loads((pathlib.Path(search_dir) / "pareto.json").read_text())
        assert pareto["provenance"]["checkpoint_type"] == "best" and pareto["provenance"]["data_source"] == "synthetic"
        assert pareto["fronts"]["epe_gmacs"][0]["epe"] == min(float(r["epe"]) for r in rows.values()
                                                              if r["arch"] == pareto["fronts"]["epe_gmacs"][0]["arch"])
        assert (pathlib.Path(search_dir) / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        printed = capsys.readouterr().out
        assert "within the budget (gmacs <= 0.1)" in printed and printed.rstrip().endswith("pareto.png")
        # each front member's noise: its per-sample EPEs, scored alone one sample at a time, against its front's best
        fronts = pareto["fronts"].values()
        members = {r["arch"] for front in fronts for r in front}
        cfg = config.run_config(str(run_dir))
        recal, val = batches.scoring_batches(cfg, data_fc2.open_data(cfg))
        singles = [(images[i:i + 1], flows[i:i + 1]) for images, flows in val for i in range(len(images))]
        with scoring.restored_scorer(str(run_dir), "best", *SEARCH_SIZE) as (sess, scorer, _):
            per_sample = {a: np.array([scoring.score_subnet(sess, scorer, supernet.parse_arch(a), recal, [s])["epe"]
                                       for s in singles]) for a in members}
        assert len(members) >= 2 and len(singles) == 6
        for front in fronts:
            best = min(front, key=lambda r: r["epe"])["arch"]
            for r in front:
                diff = per_sample[r["arch"]] - per_sample[best]
                assert r["epe_se"] == pytest.approx(np.std(diff, ddof=1) / np.sqrt(len(diff)), rel=1e-4, abs=1e-9), r
        # asked again unsplit (make rank after a sharded search), the finished parts are merged, not rescored
        monkeypatch.undo()
        assert search.main(common) == 0 and (pathlib.Path(search_dir) / "scores.csv").read_bytes() == single
        assert "holds this search already scored, split another way: merging it" in capsys.readouterr().out
        assert sorted(p.name for p in pathlib.Path(search_dir).glob("part_*")) == ["part_1of2", "part_2of2"]
        next((pathlib.Path(search_dir) / "part_2of2" / "units").glob("unit_*.json")).unlink()
        assert search.main(common) == 1
        err = capsys.readouterr().err.strip()
        assert "holds this search split in 2 and not finished (part " in err and "is unfinished: 1 of" in err, err
        assert err.endswith("finish it with --shard K/2, or move those folders away") and len(err.splitlines()) == 1
        (pathlib.Path(search_dir) / "part_2of2" / "manifest.json").unlink()  # as its writer holds it, not yet written
        assert search.main(common) == 1
        err = capsys.readouterr().err.strip()
        assert "holds this search split in 2 and not finished (" in err and "part_2of2 has no manifest yet" in err, err
        assert err.endswith("finish it with --shard K/2, or move those folders away") and len(err.splitlines()) == 1

    @pytest.mark.slow
    def test_a_killed_search_resumes_to_the_same_file(self, search_run, tmp_path):
        out, run_dir = search_run
        units = 8
        archs = [a for p in range(units) for a in itertools.product(*[[d] for d in search_tree.prefix_choices(p * 10)],
                                                                     *[range(3)] * 5)]
        (tmp_path / "archs.txt").write_text("\n".join(supernet.format_arch(a) for a in archs))
        cmd = [sys.executable, str(HERE / "search.py"), "--output_dir", str(out), "--experiment_name", "tiny",
               "--archs_file", str(tmp_path / "archs.txt")]
        env = user_env()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        search_dir = pathlib.Path(search.search_dir_for(str(run_dir), search.parse_args(cmd[2:]), ""))
        whole = (search_dir / "scores.csv").read_bytes()
        shutil.rmtree(search_dir)
        rng = np.random.default_rng(1)
        for kill in range(2):  # SIGKILL at a random moment once units are being written
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            unit_dir = search_dir / "part_1of1" / "units"
            while proc.poll() is None and len(list(unit_dir.glob("unit_*.json"))) <= 2 * kill:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.2))
            proc.kill()
            proc.wait()
        assert len(list(unit_dir.glob("unit_*.json"))) < units and not (search_dir / "scores.csv").exists()
        done = {p.name: p.read_bytes() for p in unit_dir.glob("unit_*.json")}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        assert all(PROGRAM_LINES.match(line) for line in result.stderr.splitlines()), result.stderr  # none of TF's
        assert f"{len(done)} already done" in result.stdout
        assert all((unit_dir / name).read_bytes() == data for name, data in done.items())  # finished units kept
        assert (search_dir / "scores.csv").read_bytes() == whole

    @pytest.mark.slow
    def test_merge_refuses_a_part_of_another_checkpoint(self, search_run, capsys):
        out, run_dir = search_run
        common = ["--output_dir", str(out), "--experiment_name", "tiny", "--archs", "0,0,0,0,0,0,0,0,0",
                  "2,2,2,2,2,2,2,2,2"]
        for k in (1, 2):
            assert search.main(common + ["--shard", f"{k}/2"]) == 0
        search_dir = pathlib.Path(search.search_dir_for(str(run_dir), search.parse_args(common), ""))
        shutil.copytree(search_dir / "part_1of2", search_dir / "part_1of1")  # an abandoned unsplit search
        whole = search_dir / "part_1of1" / "manifest.json"
        whole.write_text(json.dumps(dict(json.loads(whole.read_text()), shard=[1, 1])))
        capsys.readouterr()
        assert search.main(common + ["--merge"]) == 1
        assert capsys.readouterr().err.strip().endswith(
            "holds parts of 2 splits (in 1: part_1of1; in 2: part_1of2, part_2of2): remove the folders of "
            "every split but one")
        shutil.rmtree(search_dir / "part_1of1")
        manifest = search_dir / "part_2of2" / "manifest.json"
        manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), checkpoint="model-9-1")))
        capsys.readouterr()
        assert search.main(common + ["--merge"]) == 1
        err = capsys.readouterr().err.strip()
        assert "part_2of2 was made with another checkpoint" in err and len(err.splitlines()) == 1
        assert search.main(common + ["--shard", "2/2"]) == 1  # and resuming it refuses too, naming it
        assert "part_2of2 was started with another checkpoint" in capsys.readouterr().err

    @pytest.mark.slow
    def test_a_second_writer_of_a_part_is_refused(self, search_run, capsys):
        out, run_dir = search_run
        common = ["--output_dir", str(out), "--experiment_name", "tiny", "--archs", "1,1,1,1,1,1,1,1,1"]
        part = pathlib.Path(search.search_dir_for(str(run_dir), search.parse_args(common), "")) / "part_1of1"
        with ckpt.writer_lock(str(part), "search part"):
            assert search.main(common) == 1
        assert f"search part {part} is being written by another process" in capsys.readouterr().err
        assert search.main(common + ["--shard", "1/1"]) == 0  # free again once the holder is done


# ==== 23. search_tree.py: the subnet tree: each shared layer output computed once ====================================


def _tree_against_alone(archs, whole_space=False):
    """(shared, alone): metrics of `archs` scored by the search tree and one by one with
    scoring.score_subnet on the same random batches (a partial batch, a full frame with a validity
    mask), in one graph with random BN; with `whole_space` the tree scores every subnet."""
    h, w = SEARCH_SIZE
    rng = np.random.default_rng(3)
    recal = [(rng.uniform(-1, 1, (2, h, w, 6)).astype(np.float32), None) for _ in range(2)]
    val = [(rng.uniform(-1, 1, (n, vh, vw, 6)).astype(np.float32), rng.normal(0, 3, (n, vh, vw, 2)).astype(np.float32))
           for n, vh, vw in ((2, h, w), (1, h, w), (2, h + 4, w + 8))]  # a partial batch; a full frame
    val[2] += (rng.uniform(0, 1, (2, h + 4, w + 8)) > 0.3).astype(np.float32),  # with a validity mask
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(2)
        images = tf.compat.v1.placeholder(tf.float32, [None, h, w, 6])
        scorer = scoring.build_scorer(images, tf.compat.v1.placeholder(tf.float32, [None, h, w, 2]),
                                      eval_sizes=[(h + 4, w + 8)])
        tree = search_tree.build_tree([(h, w), (h + 4, w + 8)], search_tree.has_masks(val))
        randomise = _randomise_bn(graph)
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        sess.run(randomise)
        scored = [supernet.index_to_arch(i) for i in range(supernet.SPACE.num_archs)] if whole_space else archs
        shared = search_tree.score_archs(search_tree.TreeScorer(sess, tree, recal, val), scored)
        alone = {a: scoring.score_subnet(sess, scorer, a, recal, val) for a in archs}
    return shared, alone


def _assert_same_metrics(shared, alone):
    h, w = SEARCH_SIZE
    assert len({round(m["epe"], 4) for m in alone.values()}) > 0.6 * len(alone)  # the subnets really differ
    for arch in alone:
        assert shared[arch]["epe"] == pytest.approx(alone[arch]["epe"], rel=1e-5), arch
        for key in ("px1", "px3", "px5", "fl_all"):  # a pixel may sit within rounding of a threshold
            assert shared[arch][key] == pytest.approx(alone[arch][key], abs=1.5 / (3 * h * w)), (arch, key)


class TestSearchTree:
    @pytest.mark.slow
    def test_every_subnet_scores_as_evaluate_scores_it_alone(self):
        _assert_same_metrics(*_tree_against_alone([(0,) * 9, (2,) * 9] + supernet.random_archs(14, 17)))

    @pytest.mark.slow
    def test_a_modified_table_builds_its_own_exact_tree(self, monkeypatch):
        # head kernels {3, 5} only and a fourth depth option for DB1: other option counts per block
        layers = [dataclasses.replace(layer, options=(3, 5)) if layer.op in ("feature", "flow") else
                  dataclasses.replace(layer, options=(1, 2, 3, 4)) if layer.name == "DB1" else layer
                  for layer in supernet.LAYERS]
        monkeypatch.setattr(supernet, "SPACE", supernet.Space(layers))
        assert supernet.SPACE.num_archs == 3 * 3 * 3 * 4 * 2 ** 5 and search_tree.heads_per_prefix() == 32
        assert supernet.SPACE.version != supernet.Space(supernet.LAYERS).version
        archs = [supernet.uniform_arch(0), supernet.uniform_arch(3)] + supernet.random_archs(12, 5)
        assert supernet.uniform_arch(3) == (2, 2, 2, 3, 1, 1, 1, 1, 1)
        shared, alone = _tree_against_alone(archs, whole_space=True)
        assert len(shared) == supernet.SPACE.num_archs
        _assert_same_metrics(shared, alone)
        with pytest.raises(errors.ArchError, match="same number of options"):
            fair.paths_per_cycle()

    def test_trunk_path_depends_only_on_the_choices_before_each_node(self):
        path = search_tree.trunk_path((2, 0, 1, 0))
        assert path[:6] == [("E0", ()), ("E1", ()), ("EB0/rb1", ()), ("EB0/rb2", ()), ("EB0/rb3", ()), ("Down1", (2,))]
        assert ("DB0/rb2", (2, 0)) in path and ("DB0/rb3", (2, 0)) not in path and path[-1] == ("Up2", (2, 0, 1, 0))
        nodes = {node for p in itertools.product(range(3), repeat=4) for node in search_tree.trunk_path(p)}
        assert len(nodes) == 2 + 3 + 3 + 9 + 9 + 27 + 27 + 81 + 81  # each distinct (layer, path choices) once


# ==== 24. search_parts.py: a search in durable units and shards ======================================================


class TestSearchParts:
    def test_a_damaged_unit_table_is_a_search_error_naming_it(self, tmp_path):
        units = tmp_path / "part_1of1" / "units"
        units.mkdir(parents=True)
        (units / "unit_00.json").write_text(json.dumps({"prefix": 0, "rows": {"0": {}, "1": {}}, "seconds": 1.0}))
        np.save(units / "unit_00.npy", np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
        found = search_parts.read_samples(str(tmp_path), [1])
        assert list(found) == [1] and found[1].tolist() == [3.0, 4.0]
        for damage in (b"garbage", b"", np.array([[1.0, 2.0]], np.float32), np.array(["a", "b"])):
            if isinstance(damage, bytes):
                (units / "unit_00.npy").write_bytes(damage)
            else:
                np.save(units / "unit_00.npy", damage)
            with pytest.raises(errors.SearchError, match=re.escape(str(units / "unit_00.npy"))):
                search_parts.read_samples(str(tmp_path), [1])
        (units / "unit_00.json").write_text(json.dumps({"prefix": 0, "rows": {"\u00b2": {}}, "seconds": 1.0}))
        with pytest.raises(errors.SearchError, match="row '\u00b2' is not a subnet's metrics"):
            search_parts.read_units(str(tmp_path / "part_1of1"))

    def test_a_search_made_before_a_config_key_was_added_is_the_same_search(self, tmp_path):
        today = {**config.defaults(), "experiment_name": "a", "output_dir": str(tmp_path)}
        ours = {"checkpoint": "model-6", "shard": [1, 1], "units": [0], "num_archs": 3, "config": today,
                "space_version": supernet.SPACE.version}
        before = {k: v for k, v in today.items() if k not in config.ADDED_LATER}  # a run made before every later key
        before["deploy"] = {"recal_at": "run"}  # deploy's settings then: never a scoring input
        theirs = {"checkpoint": "model-6", "shard": [1, 2], "units": [3], "num_archs": 3, "config": before,
                  "space_version": supernet.SPACE.version}
        assert search_parts.other_inputs(theirs, ours) == []
        part = search_parts.part_dir(str(tmp_path), 1, 2)
        os.makedirs(part)
        (pathlib.Path(part) / "manifest.json").write_text(json.dumps(theirs))
        assert not search_parts.holds_another_search(str(tmp_path), ours)
        # a later key set to other than its default, or any scoring key changed, is another search
        for key, value in (("distill_weight", 0.5), ("seed", 7), ("bn_recal_batches", 3)):
            assert search_parts.other_inputs(theirs, dict(ours, config={**today, key: value})) == ["config"]
        assert search_parts.other_inputs(dict(theirs, checkpoint="model-7"), ours) == ["checkpoint"]

    def test_merge_refuses_a_row_relabelled_to_an_arch_never_scored(self, tmp_path):
        indices = [0, 1, 2]  # three heads of the first trunk prefix: one unit
        part = search_parts.part_dir(str(tmp_path), 1, 1)
        os.makedirs(os.path.join(part, "units"))
        manifest = {"shard": [1, 1], "units": [0], "num_archs": len(indices), "space_version": supernet.SPACE.version,
                    "archs_sha256": search_parts.fingerprint([np.array(indices, np.int64)])}
        (pathlib.Path(part) / "manifest.json").write_text(json.dumps(manifest))
        rows = {h: dict({name: 1.0 + h for name in metrics.NAMES}, sample_epe=np.ones(2)) for h in indices}
        search_parts.write_unit(part, 0, rows, 1.0)
        assert sorted(search_parts.load_parts(str(tmp_path))[1]) == indices
        unit = pathlib.Path(part) / "units" / "unit_00.json"
        saved = json.loads(unit.read_text())
        saved["rows"]["5"] = saved["rows"].pop("2")  # the same count, another arch
        unit.write_text(json.dumps(saved))
        assert 5 < search_tree.heads_per_prefix()
        with pytest.raises(errors.SearchError, match=r"3 subnets are not the search's arch set"):
            search_parts.load_parts(str(tmp_path))


# ==== 25. pareto.py: the table of scored subnets, Pareto fronts ======================================================


class TestPareto:
    def test_pareto_front_matches_brute_force(self):
        rng = np.random.default_rng(0)
        rows = [{"epe": float(e), "gmacs": float(g)} for e, g in rng.integers(0, 12, (200, 2))]
        front = pareto.pareto_front(rows, "gmacs")
        beaten = [r for r in rows if any(o["epe"] <= r["epe"] and o["gmacs"] <= r["gmacs"]
                                         and (o["epe"], o["gmacs"]) != (r["epe"], r["gmacs"]) for o in rows)]
        expected = {(r["epe"], r["gmacs"]) for r in rows if r not in beaten}
        assert {(r["epe"], r["gmacs"]) for r in front} == expected and len(front) == len(expected)
        assert [r["gmacs"] for r in front] == sorted(r["gmacs"] for r in front)
        fastest = pareto.pareto_front([{"epe": 2.0, "fps": 10.0}, {"epe": 1.0, "fps": 5.0}, {"epe": 3.0, "fps": 4.0}],
                                      "fps", maximise=True)
        assert [r["fps"] for r in fastest] == [10.0, 5.0]


# ==== 26. noise_choice.py: the one choice rule: the fastest or cheapest member within Z paired SE of the lowest ======

def _members(errors, speeds, key="fps"):
    """Members with hand-written per-pair EPEs (equal pixels per pair): rows, per-pair sums, pixels."""
    pixels = np.full(len(errors[0]), 10.0)
    rows = [{"arch": f"m{i}", "size": [32, 48], "epe": float(np.mean(e)), key: float(v)}
            for i, (e, v) in enumerate(zip(errors, speeds))]
    return rows, [np.asarray(e, np.float64) * pixels for e in errors], pixels


def _brute_choice(errors, speeds, z, rule, maximise=True):
    """The choice by hand: numpy's paired SE (equal pixels: std of the per-pair differences / sqrt n),
    every member tested against the lowest EPE, the fastest (cheapest) of those within z SE."""
    errors = [np.asarray(e, np.float64) for e in errors]
    sign = -1 if maximise else 1
    epes = [e.mean() for e in errors]
    lowest = sorted(range(len(errors)), key=lambda i: (epes[i], sign * speeds[i], i))[0]
    ses = [np.std(e - errors[lowest], ddof=1) / np.sqrt(len(e)) for e in errors]
    within = [i for i in range(len(errors)) if epes[i] - epes[lowest] <= z * ses[i]]
    fastest = sorted(within, key=lambda i: (sign * speeds[i], epes[i], i))[0]
    return (fastest if rule == "within_noise" else lowest), lowest, ses, within


class TestNoiseChoice:
    # five pairs: m1 is 0.06 worse than m0 with a paired SE of 0.051, m2 0.5 worse on every pair (SE 0),
    # m3 0.02 worse; so m0, m1 and m3 lie within 2 SE of m0, and m1 is the fastest of them
    ERRORS = [[1.0, 2.0, 3.0, 4.0, 5.0], [1.1, 2.0, 2.9, 4.2, 5.1], [1.5, 2.5, 3.5, 4.5, 5.5],
              [1.0, 2.2, 2.8, 4.1, 5.0]]
    FPS = [8.0, 19.0, 30.0, 12.0]

    def test_the_rule_matches_a_brute_force_choice_on_random_members(self):
        rng = np.random.default_rng(7)
        for trial in range(200):
            count, pairs = rng.integers(2, 8), rng.integers(3, 12)
            base = rng.uniform(0.5, 3.0, pairs)
            errors = [base + rng.normal(rng.uniform(0, 0.2), rng.uniform(0.01, 0.3), pairs) for _ in range(count)]
            speeds = list(rng.permutation(count) + 1.0)
            z = float(rng.choice([1.0, 2.0, 3.0]))
            rows, sums, pixels = _members(errors, speeds)
            for rule in config.CHOICE_RULES:
                made = noise_choice.choose(rows, sums, pixels, rule, z, cost="fps", maximise=True)
                chosen, lowest, ses, within = _brute_choice(errors, speeds, z, rule)
                assert (made.chosen, made.lowest) == (chosen, lowest), (trial, rule)
                assert [i for i, w in enumerate(made.within) if w] == within
                assert made.ses == pytest.approx(ses, rel=1e-9, abs=1e-12)
            # the same numbers as a cost to keep low (GMACs): the cheapest within the noise
            cheap = noise_choice.choose(_members(errors, speeds, "gmacs")[0], sums, pixels, "within_noise", z)
            assert cheap.chosen == _brute_choice(errors, speeds, z, "within_noise", maximise=False)[0]

    def test_the_fastest_within_the_noise_is_chosen_and_the_lowest_named_beside_it(self):
        rows, sums, pixels = _members(self.ERRORS, self.FPS)
        made = noise_choice.choose(rows, sums, pixels, "within_noise", 2.0, cost="fps", maximise=True)
        assert (made.chosen, made.lowest, made.within) == (1, 0, [True, True, False, True])
        diff = np.subtract(self.ERRORS[1], self.ERRORS[0])
        se = np.std(diff, ddof=1) / np.sqrt(5)
        assert made.ses[1] == pytest.approx(se) and se == pytest.approx(0.050990, abs=1e-6)
        label = lambda row: row["arch"]  # noqa: E731
        lines = noise_choice.lines(made, label)
        assert lines[0] == ("choice (within_noise): m1 (EPE 3.0600, 19.0 FPS): the fastest of the 3 members (of 4) "
                            "within 2 paired SE of the lowest EPE")
        assert lines[1] == f"lowest EPE: m0 (EPE 3.0000, 8.0 FPS); the choice is +0.0600 from it (paired SE {se:.4f})"
        needed = int(np.ceil(5 * (2 * se / diff.mean()) ** 2))  # SE falls as 1/sqrt(n): 2 SE reach 0.06 there
        assert needed == 15 and made.pairs_to_separate(1) == needed
        assert lines[2] == ("the noise covers 3 of the 4 members: their 5 validation pairs cannot tell them apart, so "
                            "the choice rests on fps alone; about 15 pairs would separate m1 from m0 "
                            "(n * (Z * SE / difference)^2, if both held)")
        tiled = [np.tile(e, 3) for e in self.ERRORS]  # 15 pairs of the same spread: m1 is told apart
        more = noise_choice.choose(*_members(tiled, self.FPS), "within_noise", 2.0, cost="fps", maximise=True)
        assert not more.within[1] and more.chosen == 3
        report = noise_choice.summary(made, label)
        assert report["chosen"] == {"member": "m1", "epe": pytest.approx(3.06), "fps": 19.0,
                                    "paired_se": pytest.approx(se)}
        assert report["lowest_epe"]["member"] == "m0" and report["noise_covers_front"] is True
        assert (report["rule"], report["noise_se"], report["pairs_to_separate"], report["within_noise"]) == (
            "within_noise", 2.0, 15, 3)
        json.dumps(report)  # a report stores it as it is

    def test_the_old_rule_keeps_the_lowest_and_names_the_fastest_within_the_noise(self):
        rows, sums, pixels = _members(self.ERRORS, self.FPS)
        made = noise_choice.choose(rows, sums, pixels, "lowest_epe", 2.0, cost="fps", maximise=True)
        lines = noise_choice.lines(made, lambda row: row["arch"])
        assert made.chosen == made.lowest == 0 and lines[0].startswith("choice (lowest_epe): m0 (EPE 3.0000")
        assert lines[2] == ("the fastest within the noise (2 paired SE) would be m1 (EPE 3.0600, 19.0 FPS) "
                            "(choice rule within_noise)")
        assert "the lowest EPE among them may be the pairs' luck; about 15 pairs would separate m1 from m0" in lines[3]

    def test_a_lowest_that_is_also_the_fastest_is_said_and_a_narrow_noise_is_not_called_covering(self):
        rows, sums, pixels = _members(self.ERRORS, [40.0, 19.0, 30.0, 12.0])
        made = noise_choice.choose(rows, sums, pixels, "within_noise", 2.0, cost="fps", maximise=True)
        lines = noise_choice.lines(made, lambda row: row["arch"])
        assert made.chosen == made.lowest == 0
        assert "the lowest-EPE member is also the fastest within the noise" in lines
        assert made.pairs_to_separate(0) is None
        narrow = noise_choice.choose(rows, sums, pixels, "within_noise", 0.5, cost="fps", maximise=True)
        assert narrow.within == [True, False, False, True] and not narrow.covers_front  # 2 of 4: not more than half
        assert not any("the noise covers" in line for line in noise_choice.lines(narrow, lambda row: row["arch"]))

    def test_ties_go_to_the_faster_then_to_the_lower_epe(self):
        same = [1.0, 2.0, 3.0]
        rows, sums, pixels = _members([same, same, [1.05, 2.0, 3.0]], [10.0, 20.0, 20.0])
        for rule in config.CHOICE_RULES:  # equal EPE: the faster is the lowest; equal FPS: the lower EPE
            made = noise_choice.choose(rows, sums, pixels, rule, 2.0, cost="fps", maximise=True)
            assert (made.lowest, made.chosen, made.within) == (1, 1, [True, True, True])
        rows, sums, pixels = _members([same, same], [0.5, 0.2], "gmacs")
        assert noise_choice.choose(rows, sums, pixels, "within_noise", 2.0).chosen == 1  # the cheaper of equals

    def test_members_without_per_pair_epes_keep_the_lowest_and_say_why(self):
        rows, sums, pixels = _members(self.ERRORS, self.FPS)
        made = noise_choice.choose(rows, [None] * 4, pixels, "within_noise", 2.0, cost="fps", maximise=True)
        assert made.chosen == made.lowest == 0 and made.ses == [None] * 4
        assert "no per-pair EPEs recorded for these members: the noise between them is unknown" in noise_choice.lines(
            made, lambda row: row["arch"])

    def test_the_settings_are_in_config_json_with_help_and_bad_values_are_named(self, capsys):
        deploy_keys = config.defaults()["deploy"]
        assert (deploy_keys["choice_rule"], deploy_keys["choice_noise_se"]) == ("within_noise", 2.0)
        assert sorted(config.DEPLOY_HELP) == sorted(deploy_keys)
        for flags, words in ((["--choice_rule", "fastest"], "key 'deploy.choice_rule' must be one of within_noise, "
                                                            "lowest_epe, got 'fastest'"),
                             (["--choice_noise_se", "0"], "key 'deploy.choice_noise_se' must be a number > 0, got 0"),
                             (["--choice_noise_se", "inf"], "key 'deploy.choice_noise_se' must be a number > 0")):
            with pytest.raises(errors.ConfigError, match=re.escape(words)):
                deploy.settings_of(deploy.parse_args(["--target", "himax-we2", *flags]))
        settings = deploy.settings_of(deploy.parse_args(["--target", "himax-we2", "--choice_rule", "lowest_epe",
                                                         "--choice_noise_se", "3"]))
        assert (settings["choice_rule"], settings["choice_noise_se"]) == ("lowest_epe", 3.0)
        args = search.parse_args(["--choice_rule", "lowest_epe", "--choice_noise_se", "1.5"])
        assert (args.choice_rule, args.choice_noise_se) == ("lowest_epe", 1.5)
        assert search.parse_args([]).choice_rule == "within_noise"
        for flags, words in ((["--choice_noise_se", "-1"], "--choice_noise_se -1.0 must be a positive number"),
                             (["--choice_rule", "fastest"], "argument --choice_rule: invalid choice: 'fastest'")):
            with pytest.raises(SystemExit):
                search.parse_args(flags)
            err = capsys.readouterr().err
            assert err.startswith(f"error: {words}") and err.count("\n") == 1, err


class TestChoiceInSearch:
    @pytest.mark.slow
    def test_a_budgets_choice_names_both_members_in_print_report_and_picture(self, search_run, capsys):
        out, run_dir = search_run
        archs = [supernet.format_arch(a) for a in [(2,) * 9] + supernet.random_archs(14, 11)]  # all-0 beats all here
        common = ["--output_dir", str(out), "--experiment_name", "tiny", "--archs", *archs, "--max_gmacs", "0.15"]
        capsys.readouterr()
        assert search.main(common) == 0
        printed = capsys.readouterr().out
        search_dir = pathlib.Path(search.search_dir_for(str(run_dir), search.parse_args(common), ""))
        rows = [r for r in _scores(search_dir / "scores.csv").values() if float(r["gmacs"]) <= 0.15]
        # the budget's front by hand: no other subnet within it has fewer (or as many) GMACs and a lower EPE
        cost, epe = {r["arch"]: float(r["gmacs"]) for r in rows}, {r["arch"]: float(r["epe"]) for r in rows}
        front = [r for r in rows if not any(cost[o["arch"]] <= cost[r["arch"]] and epe[o["arch"]] < epe[r["arch"]]
                                            for o in rows)]
        front.sort(key=lambda r: float(r["gmacs"]))
        assert len(front) >= 2
        manifest = json.loads((search_dir / "part_1of1" / "manifest.json").read_text())
        pixels = np.asarray(manifest["sample_pixels"], np.float64)
        assert np.all(pixels == pixels[0])
        sums = search_parts.read_samples(str(search_dir), [supernet.arch_to_index(supernet.parse_arch(r["arch"]))
                                                           for r in front])
        errors = [sums[supernet.arch_to_index(supernet.parse_arch(r["arch"]))] / pixels for r in front]
        assert [e.mean() for e in errors] == pytest.approx([float(r["epe"]) for r in front], rel=1e-5)
        chosen, lowest, _, within = _brute_choice(errors, [float(r["gmacs"]) for r in front], 2.0, "within_noise",
                                                  maximise=False)
        report = json.loads((search_dir / "pareto.json").read_text())
        budget = report["budget_choice"]
        assert (budget["chosen"]["member"], budget["lowest_epe"]["member"]) == (front[chosen]["arch"],
                                                                                front[lowest]["arch"])
        assert (budget["rule"], budget["noise_se"], budget["budget"], budget["within_noise"]) == (
            "within_noise", 2.0, "gmacs <= 0.15", len(within))
        assert report["provenance"]["choice_rule"] == "within_noise" and report["provenance"]["choice_noise_se"] == 2
        assert f"choice (within_noise): {front[chosen]['arch']} (EPE " in printed
        assert f"lowest EPE: {front[lowest]['arch']} (EPE " in printed
        assert budget["lines"][0] in printed
        # the old rule on the parts already scored: the lowest EPE, the fastest within the noise named
        assert search.main(common + ["--merge", "--choice_rule", "lowest_epe", "--choice_noise_se", "1"]) == 0
        printed = capsys.readouterr().out
        old = json.loads((search_dir / "pareto.json").read_text())["budget_choice"]
        assert old["chosen"]["member"] == old["lowest_epe"]["member"] == front[lowest]["arch"]
        assert (old["rule"], old["noise_se"]) == ("lowest_epe", 1.0)
        assert f"choice (lowest_epe): {front[lowest]['arch']} (EPE " in printed


# ==== 27. refine.py: the top candidates fine-tuned from the supernet's weights and rescored ==========================

REFINE_ARCHS = ["0,0,0,0,0,0,0,0,0", "0,1,2,0,1,2,0,1,2", "2,2,2,2,2,2,2,2,2", "1,1,1,1,1,1,1,1,1",
                "2,1,0,2,1,0,2,1,0"]
REFINE_SETTINGS = {"top": 2, "steps": 2, "epochs": 2, "lr_scale": 1.0}


def _refine_flags(out, search_dir):
    return ["--output_dir", str(out), "--experiment_name", "sup", "--search", str(search_dir), "--off_front",
            "--refine_top", "2", "--refine_steps", "2", "--refine_epochs", "2", "--jobs", "1"]


@pytest.fixture(scope="module")
def refine_study(tmp_path_factory):
    """A tiny supernet, a search of five of its subnets, and refine.py over its two best: interrupted
    once the first candidate is trained and scored, then run again to the end."""
    out = tmp_path_factory.mktemp("refine")
    assert train.main(RUN_FLAGS + ["--output_dir", str(out), "--experiment_name", "sup", "--num_epochs", "1",
                                   "--steps_per_epoch", "1", "--eval_batches", "0"]) == 0
    assert search.main(["--output_dir", str(out), "--experiment_name", "sup", "--archs"] + REFINE_ARCHS) == 0
    search_dir = next((out / "sup").glob("search_best_archs*"))
    put = refining.ScoreBook.put

    def put_then_interrupt(book, key, score):
        put(book, key, score)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(refining.ScoreBook, "put", put_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            refine.main(_refine_flags(out, search_dir))
    folder = out / "sup" / "refine" / search_dir.name
    interrupted = {"report": (folder / refining.REPORT_NAME).exists(),
                   "finished": sorted(p.parent.name for p in (out / "sup/refine/runs").glob("*/train_report.json"))}
    assert refine.main(_refine_flags(out, search_dir)) == 0
    return out, search_dir, folder, interrupted


class TestRefine:
    def test_the_time_left_weighs_each_child_by_its_arch_macs(self, refine_study, monkeypatch):
        out, seen = refine_study[0], {}
        monkeypatch.setattr(parallel, "run_all", lambda todo, jobs, **kw: seen.update(
            todo=[name for name, _, _ in todo], work=kw["work"]))
        codes = ["0,0,0,0,0,0,0,0,0", "2,2,2,2,2,2,2,2,2"]
        settings = dict(config.defaults()["refine"], steps=3, epochs=1)  # children not trained yet
        folders = refining.train_children(str(out / "sup"), codes, settings, (1, 0), str(HERE / "train.py"),
                                          "two", lambda line: None, lambda folder: None)
        assert seen["todo"] == folders
        assert seen["work"] == {f: supernet.count_macs(supernet.parse_arch(c)) for f, c in zip(folders, codes)}

    def test_a_child_starts_at_the_supernets_learning_rate_times_the_scale(self, refine_study, tmp_path):
        run_dir, defaults = str(refine_study[0] / "sup"), config.defaults()
        supernet_lr = config.run_config(run_dir)["learning_rate"]
        for scale, name in ((1.0, "000000000_n6_e3"), (0.3, "000000000_n6_e3_lr0.3")):
            settings = dict(defaults["refine"], steps=6, epochs=3, lr_scale=scale)
            child_dir, argv = refining.child(run_dir, "0,0,0,0,0,0,0,0,0", str(tmp_path), settings, "train.py")
            assert child_dir == str(tmp_path / name)
            assert bench_methods.refine_method(settings) == "refine_" + name.split("_", 1)[1]
            args, overrides = train.parse_args(argv[2:], defaults)  # the child's config as train.py resolves it
            cfg, _ = train.resolve_config(args, overrides, defaults)
            assert cfg["learning_rate"] == supernet_lr * scale and cfg["steps_per_epoch"] * cfg["num_epochs"] == 6
            assert ("--learning_rate" in argv) == (scale != 1)  # children named before the scale keep their command

    def test_candidates_are_the_lowest_supernet_epe_within_the_budget(self):
        rows = [{"arch": a, "gmacs": g, "params": p, "epe": e} for a, g, p, e in (
            ("a", 0.1, 10, 3.0), ("b", 0.2, 20, 2.0), ("c", 0.3, 15, 2.5), ("d", 0.4, 40, 1.0), ("e", 0.5, 5, 0.9))]
        front = pareto.pareto_front(rows, "gmacs")  # c is beaten by b (cheaper and lower EPE)
        assert [r["arch"] for r in front] == ["a", "b", "d", "e"]
        chosen = refining.choose_candidates(front, [("gmacs", 0.45, 1)], 2, "front member")
        assert [r["arch"] for r in chosen] == ["d", "b"]
        chosen = refining.choose_candidates(rows, [("params", 20, 1)], 9, "x")
        assert [r["arch"] for r in chosen] == ["e", "b", "c", "a"]
        with pytest.raises(errors.RefineError, match=r"no front member within the budget \(gmacs <= 0.05\)"):
            refining.choose_candidates(front, [("gmacs", 0.05, 1)], 2, "front member")

    def test_settings_are_checked_and_old_runs_still_read(self, tmp_path):
        ok = {"top": 1, "steps": 6, "epochs": 3, "lr_scale": 0.5}
        assert config.refine_problems(ok) == []
        assert config.refine_problems(dict(ok, top=0)) == ["key 'refine.top' must be > 0, got 0"]
        assert config.refine_problems(dict(ok, lr_scale=math.nan)) == ["key 'refine.lr_scale' must be > 0, got nan"]
        assert "must be a multiple of key 'refine.epochs'" in config.refine_problems(dict(ok, steps=7))[0]
        saved = {k: v for k, v in config.defaults().items() if k != "refine"}  # a run made before the key
        (tmp_path / "config.json").write_text(json.dumps(saved))
        assert config.run_config(str(tmp_path))["refine"] == config.defaults()["refine"]

    def test_bad_flags_are_one_line(self, refine_study, tmp_path, capsys):
        out, search_dir, _, _ = refine_study
        flags = _refine_flags(out, search_dir)
        for argv, says in ((flags + ["--refine_steps", "3"], "--refine_steps (3) must be a multiple of "
                                                             "--refine_epochs (2)"),
                           (flags[:5] + [str(tmp_path)], f"search {tmp_path}: no search parts under"),
                           (flags + ["--max_gmacs", "0.001"], "no subnet the search scored within the budget")):
            code, err = _run_main(refine.main, argv, capsys)
            assert code == 1 and len(err) == 1 and err[0].startswith(f"error: {says}"), err
        with pytest.raises(SystemExit):
            refine.main(flags + ["--size", "32x48"])
        assert capsys.readouterr().err == "error: --size needs --deploy_report (a search holds one size)\n"

    @pytest.mark.slow
    def test_report_holds_the_best_candidates_refined_with_paired_errors(self, refine_study):
        out, search_dir, folder, interrupted = refine_study
        report = json.loads((folder / refining.REPORT_NAME).read_text())
        scored = {r["arch"]: float(r["epe"]) for r in _scores(search_dir / "scores.csv").values()}
        lowest = sorted(scored, key=scored.get)[:2]
        assert [r["arch"] for r in report["candidates"]] == lowest and report["best_supernet"] == lowest[0]
        kept = json.loads((folder / refining.SCORES_NAME).read_text())
        refined = {r["arch"]: r for r in report["candidates"]}
        best = refined[report["best_refined"]]
        assert best["refined_epe"] == min(r["refined_epe"] for r in report["candidates"])
        for row in report["candidates"]:
            pairs = np.array(kept[pathlib.Path(row["run"]).name]["sample_epe"]) / (32 * 48)
            best_pairs = np.array(kept[pathlib.Path(best["run"]).name]["sample_epe"]) / (32 * 48)
            assert row["refined_epe"] == pytest.approx(pairs.mean(), rel=1e-6)  # TF sums the EPE in float32
            # equal pixels per pair: the paired SE is the spread of the per-pair differences over sqrt(n)
            assert row["refined_se"] == pytest.approx(np.std(pairs - best_pairs, ddof=1) / np.sqrt(4), abs=1e-12)
            assert row["supernet_epe"] == pytest.approx(scored[row["arch"]], rel=1e-12)
            assert row["change"] == pytest.approx(row["refined_epe"] - row["supernet_epe"], rel=1e-12)
            assert row["steps"] == 2 and row["size"] == [32, 48] and row["wall_time_s"] > 0
        assert report["command"].startswith("python refine.py --output_dir") and report["val_pairs"] == 4
        assert (folder / refining.PICTURE_NAME).read_bytes()[:4] == b"\x89PNG"
        assert (folder / refining.PICTURE_NAME).stat().st_size > 10000
        # the first invocation was interrupted once its first candidate was trained and scored
        assert interrupted == {"report": False, "finished": [pathlib.Path(report["candidates"][0]["run"]).name]}

    @pytest.mark.slow
    def test_rerun_after_a_kill_trains_nothing_again_and_writes_the_same_report(self, refine_study, capsys):
        out, search_dir, folder, _ = refine_study
        before = (folder / refining.REPORT_NAME).read_bytes()
        report = json.loads(before)
        second = pathlib.Path(report["candidates"][1]["run"])
        checkpoint = ckpt.load_meta(str(second), "last")["checkpoint"]
        # killed after the second child's last checkpoint, before its report; the scores lost too
        for path in (folder / refining.REPORT_NAME, folder / refining.SCORES_NAME, second / "train_report.json"):
            path.unlink()
        capsys.readouterr()
        assert refine.main(_refine_flags(out, search_dir)) == 0
        said = capsys.readouterr().out
        assert "1 trained already, training 1" in said and "--resume" in said
        assert ckpt.load_meta(str(second), "last")["checkpoint"] == checkpoint  # resumed at its end: no step more
        assert (folder / refining.REPORT_NAME).read_bytes() == before
        capsys.readouterr()
        assert refine.main(_refine_flags(out, search_dir)) == 0  # all done: nothing trained, every score kept
        said = capsys.readouterr().out
        assert "2 trained already, training 0" in said and said.count("kept from before") == 2
        assert (folder / refining.REPORT_NAME).read_bytes() == before

    @pytest.mark.slow
    def test_a_child_starts_from_the_supernets_best_weights_bit_for_bit(self, refine_study, tmp_path):
        out, _, _, _ = refine_study
        code = REFINE_ARCHS[1]
        child_dir, argv = refining.child(str(out / "sup"), code, str(tmp_path), REFINE_SETTINGS, "train.py")
        defaults = config.defaults()
        args, overrides = train.parse_args(argv[2:], defaults)
        cfg, run_dir = train.resolve_config(args, overrides, defaults)
        assert run_dir == child_dir and cfg["steps_per_epoch"] * cfg["num_epochs"] == 2
        hardware = devices.report(1, allow_cpu=True, log=lambda line: None)
        run = training.prepare(cfg, run_dir, hardware, resume=False, dry_run=True)
        with tf.compat.v1.Session(graph=run.graph, config=tensorflow_quiet.session_config()) as sess:
            training.start_session(sess, run, run_dir)
            values = {v.op.name: sess.run(v) for v in run.ops["model_variables"]}
        source = _checkpoint_values(out / "sup", "best")
        kernels = [n for n in values if not n.endswith(("moving_mean", "moving_variance"))]
        assert sum(values[n].size for n in kernels) == supernet.count_params(supernet.parse_arch(code), 32, 48)
        for name, value in values.items():
            np.testing.assert_array_equal(value, source[name], err_msg=name)

    @pytest.mark.slow
    def test_a_refined_score_is_what_evaluate_gives_its_checkpoint(self, refine_study):
        _, _, folder, _ = refine_study
        for row in json.loads((folder / refining.REPORT_NAME).read_text())["candidates"]:
            run = pathlib.Path(row["run"])
            assert evaluate.main(["--output_dir", str(run.parent), "--experiment_name", run.name,
                                  "--checkpoint_type", "last"]) == 0
            result = json.loads((run / "supernet_eval_result_last.json").read_text())["archs"][0]
            assert result["arch"] == row["arch"] and result["epe"] == pytest.approx(row["refined_epe"], rel=1e-6)

    @pytest.mark.slow
    def test_a_deployments_front_at_one_size_gives_the_candidates(self, refine_study, tmp_path):
        out, search_dir, _, _ = refine_study
        run_dir = out / "sup"
        own = run_dir / "search_best"
        if not own.exists():
            own.symlink_to(search_dir.name)  # the deployment's search at the run's size
        scored = {r["arch"]: float(r["epe"]) for r in _scores(search_dir / "scores.csv").values()}
        front = [{"arch": a, "size": [32, 48]} for a in REFINE_ARCHS[:4]]
        front.append({"arch": REFINE_ARCHS[4], "size": [16, 32]})
        report = {"input_size": [32, 48], "front": front, "settings": {"recal_at": "run"},
                  "checkpoint": ckpt.load_meta(str(run_dir), "best")["prefix"]}
        (tmp_path / "deploy_board").mkdir()
        (tmp_path / "deploy_board" / "deploy_report.json").write_text(json.dumps(report))
        source = refining.deployment_source(str(run_dir), str(tmp_path / "deploy_board"), None, [], 3)
        assert [c["arch"] for c in source.candidates] == sorted(REFINE_ARCHS[:4], key=scored.get)[:3]
        assert source.name == "deploy_board_32x48" and source.search_dir == str(own)
        with pytest.raises(errors.RefineError, match="no member at 24x32 .it has 16x32, 32x48"):
            refining.deployment_source(str(run_dir), str(tmp_path / "deploy_board"), (24, 32), [], 3)


# ==== 28. export.py: one subnet to TFLite FP32/INT8 and the NPU compiler =============================================


EXPORT_ARCH = (0, 1, 2, 0, 1, 2, 0, 1, 2)


@pytest.fixture(scope="module")
def export_run(tiny_runs):
    """The trained tiny run "whole" of tiny_runs (32x48) to export from: its output folder."""
    return tiny_runs


class TestExportCommand:
    @pytest.mark.slow
    def test_export_cli_writes_models_report_and_agreeing_flows(self, export_run):
        result = subprocess.run([sys.executable, "export.py", "--output_dir", str(export_run), "--experiment_name",
                                 "whole", "--arch", supernet.format_arch(EXPORT_ARCH), "--repeats", "2", "--warmup",
                                 "1"], cwd=HERE, env=user_env(), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert all(PROGRAM_LINES.match(line) for line in result.stderr.splitlines()), result.stderr  # none of TF's
        folder = export_run / "whole" / "export_012012012"
        report = json.loads((folder / "export_report.json").read_text())
        agreement, vela = report["agreement"], report["vela"]
        assert report["graph_check"]["ok"] and report["input_size"] == [32, 48]
        assert report["data_source"] == "synthetic" and agreement["fp32_max_abs_diff"] < 1e-4
        assert agreement["epe_fp32"] == pytest.approx(agreement["epe_tf"], abs=1e-4)
        # the static graph holds the statistics evaluate.py's recalibration gives: the same EPE as its scorer
        run = str(export_run / "whole")
        cfg = config.run_config(run)
        recal, val = batches.scoring_batches(cfg, data_fc2.open_data(cfg))
        with scoring.restored_scorer(run, "best", 32, 48) as (sess, scorer, _):
            alone = scoring.score_subnet(sess, scorer, EXPORT_ARCH, recal, val)
        assert agreement["epe_tf"] == pytest.approx(alone["epe"], rel=1e-4)
        assert agreement["int8_epe_loss"] == pytest.approx(agreement["epe_int8"] - agreement["epe_tf"])
        assert report["sizes_bytes"]["int8"] < report["sizes_bytes"]["fp32"] / 3
        assert all(report["cpu"][f"{k}_{t}_ms"] > 0 for k in ("fp32", "int8") for t in ("1_thread", "all_threads"))
        assert vela["fps"] > 0 and vela["accelerator_config"] == "Ethos_U55_64" and vela["cpu_operators"] == 0
        assert (folder / "model_fp32.tflite").is_file()
        assert (folder / "vela" / "model_int8_vela.tflite").is_file()

    @pytest.mark.slow
    def test_export_at_another_input_size(self, export_run):
        assert export.main(["--output_dir", str(export_run), "--experiment_name", "whole", "--arch",
                            "0,0,0,0,0,0,0,0,0", "--input_h", "16", "--input_w", "24", "--repeats", "1",
                            "--warmup", "0", "--eval_batches", "1"]) == 0
        folder = export_run / "whole" / "export_000000000_16x24"
        report = json.loads((folder / "export_report.json").read_text())
        assert report["input_size"] == [16, 24] and report["run_input_size"] == [32, 48]
        assert report["agreement"]["fp32_max_abs_diff"] < 1e-4
        interpreter = convert.tflite_predictor(str(folder / "model_int8.tflite")).interpreter
        assert list(interpreter.get_input_details()[0]["shape"]) == [1, 16, 24, 6]

    @pytest.mark.slow
    @pytest.mark.parametrize("flags, words", [
        (["--arch", "0,1,3,0,0,0,0,0,0"], "field 2 (DB0)"),
        (["--arch", "0,0,0,0,0,0,0,0,0", "--input_h", "30"], "h=30"),
        (["--arch", "0,0,0,0,0,0,0,0,0", "--vela", "/nonexistent/vela"], "Vela not found at /nonexistent/vela"),
        (["--arch", "0,0,0,0,0,0,0,0,0", "--experiment_name", "nocheckpoint"], "'best' checkpoint meta not found"),
        (["--latency_table", "--experiment_name", "missing"], "run folder not found"),
    ])
    def test_bad_input_is_a_one_line_error(self, export_run, tmp_path, capsys, flags, words):
        run = tmp_path / "nocheckpoint"
        run.mkdir()
        (run / "config.json").write_text((export_run / "whole" / "config.json").read_text())
        argv = ["--output_dir", str(tmp_path), "--experiment_name", "nocheckpoint"] + flags
        code, err = _run_main(export.main, argv, capsys)
        assert code == 1 and len(err) == 1 and err[0].startswith("error:") and words in err[0]


# ==== 29. convert.py: one subnet to TFLite: static graph, FP32/INT8 ==================================================


def _random_subnet_values(graph, seed):
    """{variable name: value} for a static graph: He-scaled kernels and random BN parameters and statistics."""
    rng = np.random.default_rng(seed)
    values = {}
    for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES):
        shape, name = v.shape.as_list(), v.op.name
        if name.endswith("/kernel"):
            values[name] = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:3])), shape)
        elif name.endswith("variance"):
            values[name] = rng.uniform(0.5, 2.0, shape)
        else:  # gamma, beta, moving_mean
            values[name] = rng.uniform(0.5, 1.5, shape) if name.endswith("gamma") else rng.normal(0, 0.1, shape)
    return {k: v.astype(np.float32) for k, v in values.items()}


def _synthetic_images(num, h, w, seed):
    """Real-looking frame pairs (the synthetic chairs) stacked to [num, h, w, 6] in [-1, 1]."""
    arrays = synthetic.make_synthetic_arrays(num, h, w, seed)
    return np.concatenate([fc2_pipeline.normalise(arrays["img0"]), fc2_pipeline.normalise(arrays["img1"])], -1)


def _static_models(arch, h, w, seed, calibration_images):
    """(TensorFlow's flow on `probe` images, FP32 bytes, INT8 bytes, probe) of a random-weight static subnet."""
    graph, images, flow = convert.build_static_graph(arch, h, w)
    probe = np.random.default_rng(seed).uniform(-1, 1, (3, h, w, supernet.INPUT_CHANNELS)).astype(np.float32)
    with tf.compat.v1.Session(graph=graph) as sess:
        convert.load_values(sess, graph, _random_subnet_values(graph, seed))
        reference = np.concatenate([sess.run(flow, {images: p[None]}) for p in probe])
        fp32 = convert.convert(sess, images, flow)
        int8 = convert.convert(sess, images, flow, [(calibration_images,)])
    return reference, fp32, int8, probe


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """FP32 and INT8 models of EXPORT_ARCH at 32x48 with random weights, written to a temp folder."""
    folder = tmp_path_factory.mktemp("models")
    reference, fp32, int8, probe = _static_models(EXPORT_ARCH, 32, 48, 3, _synthetic_images(4, 32, 48, 5))
    paths = {kind: atomic_files.write_atomic(str(folder / f"model_{kind}.tflite"), content)
             for kind, content in (("fp32", fp32), ("int8", int8))}
    return paths, reference, probe, folder


class TestConvert:
    @pytest.mark.slow
    @pytest.mark.parametrize("arch", [(0,) * 9, EXPORT_ARCH])
    def test_static_graph_holds_exactly_the_chosen_subnet(self, arch):
        graph, _, _ = convert.build_static_graph(arch, 32, 48)
        check = convert.graph_check(graph, arch, 32, 48)
        variables = graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
        kernels = sorted(tuple(v.shape.as_list()) for v in variables if v.op.name.endswith("/kernel"))
        wanted = sorted((k, k, cin, cout) for _, k, cin, cout, _, _, _ in supernet.layer_table(arch, 32, 48))
        assert check["ok"] and check["control_flow_ops"] == [] and kernels == wanted
        assert check["params"] == supernet.count_params(arch, 32, 48) == check["expected_params"]
        assert sum(op.type == "Conv2D" for op in graph.get_operations()) == len(wanted)
        dynamic = tf.Graph()
        with dynamic.as_default():
            supernet.build_flows(tf.compat.v1.placeholder(tf.float32, [1, 32, 48, 6]),
                                 tf.compat.v1.placeholder(tf.int32, [9]), mode="eval")
        refused = convert.graph_check(dynamic, arch, 32, 48)
        assert not refused["ok"] and refused["control_flow_ops"] and refused["params"] > check["params"]

    @pytest.mark.slow
    def test_fp32_matches_tensorflow_and_int8_is_full_integer(self, tiny_models):
        paths, reference, probe, _ = tiny_models
        fp32 = np.concatenate(convert.predictions(convert.tflite_predictor(paths["fp32"]), [(probe, None)]))
        assert np.abs(fp32 - reference).max() < 1e-4 and np.abs(reference).max() > 0.1
        interpreter = convert.tflite_predictor(paths["int8"]).interpreter
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        assert inp["dtype"] == np.int8 and out["dtype"] == np.int8 and list(inp["shape"]) == [1, 32, 48, 6]
        int8 = np.concatenate(convert.predictions(convert.tflite_predictor(paths["int8"]), [(probe, None)]))
        scale = out["quantization"][0]
        assert np.abs(int8 - reference).mean() < 0.1 * np.abs(reference).mean() + scale
        assert np.array_equal(convert.quantize(np.array([-1.0, 0.0, 0.26, 9.0]), 0.5, -3), np.array([-5, -3, -2, 15]))
        assert np.allclose(convert.dequantize(np.array([-128, -3, 127], np.int8), 0.5, -3), [-62.5, 0.0, 65.0])


# ==== 30. compiler.py: the edge compiler behind one door (Vela), board targets, the compile cache ====================


class _CountingTool:
    """A stand-in compiler: writes the files Vela would, counts its compiles, summary from the model's size."""
    name = "vela"

    def __init__(self):
        self.compiles = 0

    def version(self):
        return "counting 1.0"

    def compile(self, model_path, target, out_dir):
        self.compiles += 1
        os.makedirs(out_dir, exist_ok=True)
        (pathlib.Path(out_dir) / "m_vela.tflite").write_bytes(pathlib.Path(model_path).read_bytes()[::-1])
        size = os.path.getsize(model_path)
        return {"sram_used_kib": size / 1024, "compiled_model": os.path.join(out_dir, "m_vela.tflite")}, [
            {"Name": "supernet/E0_conv", "Op Cycles": str(size)}]


SMALL_BOARD = {"name": "small", "accelerator_config": "ethos-u55-64", "system_config": "Ethos_U55_High_End_Embedded",
               "memory_mode": "Shared_Sram", "optimise": "Performance", "sram_kib": 140, "flash_kib": 16384}


class TestCompilerVela:
    @pytest.mark.slow
    def test_vela_summary_is_parsed_into_the_report_fields(self, tiny_models):
        paths, _, _, folder = tiny_models
        target = compiler.flag_target("ethos-u55-64", "Ethos_U55_High_End_Embedded", "Shared_Sram")
        summary, per_layer = compiler.compile_model(paths["int8"], target, str(folder / "vela"))
        assert summary["accelerator_config"] == "Ethos_U55_64" and summary["memory_mode"] == "Shared_Sram"
        assert summary["fps"] == pytest.approx(summary["clock_hz"] / summary["cycles_total"], rel=1e-6)
        assert summary["inference_ms"] == pytest.approx(1e3 / summary["fps"], rel=1e-6)
        assert sum(float(r["Op Cycles"]) for r in per_layer) == pytest.approx(summary["cycles_total"])
        assert summary["npu_operators"] > 20 and summary["cpu_operators"] == 0 and summary["cpu_operator_names"] == []
        assert summary["sram_used_kib"] > 0 and summary["off_chip_flash_used_kib"] > 0
        assert os.path.isfile(summary["compiled_model"])

    def test_operator_counts_name_the_cpu_fallbacks(self):
        stdout = ("Total SRAM used     2536.00 KiB\n\nCPU operators = 2 (3.2%)\n"
                  "   CPU: ResizeBilinear = supernet/resize/ResizeBilinear (outputs [1, 23, 30, 256])\n"
                  "   CPU: ResizeBilinear = supernet/resize_1/ResizeBilinear (outputs [1, 45, 60, 128])\n"
                  "NPU operators = 61 (96.8%)\n   NPU: Conv2D = supernet/E0_conv (outputs [1, 90, 120, 32])\n")
        assert compiler.parse_operator_counts(stdout) == {
            "npu_operators": 61, "cpu_operators": 2,
            "cpu_operator_names": ["ResizeBilinear = supernet/resize/ResizeBilinear",
                                   "ResizeBilinear = supernet/resize_1/ResizeBilinear"]}
        with pytest.raises(errors.CompileError, match="operator counts"):
            compiler.parse_operator_counts("no summary")

    def test_vela_missing_from_the_environment(self, monkeypatch, tmp_path):
        monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(errors.CompileError, match="Vela not found"):
            compiler.Vela()

    def test_a_configparser_error_is_one_clean_line(self):
        bad = "garbage\n[System_Config.x]\n"
        try:
            configparser.ConfigParser().read_string(bad, source="v.ini")
        except configparser.Error as err:
            line = compiler.ini_error_line(err)
        assert line == "File contains no section headers; file: 'v.ini', line: 1; 'garbage'"


class TestCompilerTargets:
    def test_targets_load_and_every_fault_is_named(self, tmp_path):
        assert {"himax-we2", "ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256"} <= set(
            compiler.preset_names())
        himax = compiler.load_target("himax-we2")
        assert himax.optimise == "Size" and himax.sram_kib == 1432 and os.path.isabs(himax.vela_ini)
        good = {"name": "b", "accelerator_config": "ethos-u55-64", "system_config": "Ethos_U55_High_End_Embedded",
                "memory_mode": "Shared_Sram", "optimise": "Size", "sram_kib": 500, "flash_kib": 4096}
        (tmp_path / "ini.ini").write_text("[System_Config.Mine]\ncore_clock=1e8\n")
        cases = [({k: v for k, v in good.items() if k != "flash_kib"}, "field 'flash_kib' is missing"),
                 (dict(good, optimise="Fast"), "field 'optimise' must be one of Performance, Size"),
                 (dict(good, sram_kib=-1), "field 'sram_kib' must be a positive number"),
                 (dict(good, colour="red"), "unknown field 'colour'"),
                 (dict(good, system_config="NoSuch"), "has no section [System_Config.NoSuch]"),
                 (dict(good, system_config="Mine", vela_ini="ini.ini"),
                  "ini.ini has no section [Memory_Mode.Shared_Sram]"),
                 ([1, 2], "must hold a JSON object")]
        for fields, words in cases:
            (tmp_path / "t.json").write_text(json.dumps(fields))
            with pytest.raises(errors.CompileError, match=re.escape(words)):
                compiler.load_target(str(tmp_path / "t.json"))
        with pytest.raises(errors.CompileError, match="no such target file or preset.*himax-we2"):
            compiler.load_target("nosuch")
        (tmp_path / "t.json").write_text(json.dumps(good))
        assert compiler.load_target(str(tmp_path / "t.json")).sram_kib == 500

    @pytest.mark.parametrize("field, value", [("sram_kib", 1e30), ("flash_kib", 1e30), ("min_fps", 1e30),
                                              ("sram_kib", float("inf")), ("flash_kib", 4 * 1024 ** 2 + 1)])
    def test_every_numeric_target_field_has_an_upper_bound(self, tmp_path, field, value):
        fields = {"name": "b", "accelerator_config": "ethos-u55-64", "system_config": "Ethos_U55_High_End_Embedded",
                  "memory_mode": "Shared_Sram", "optimise": "Size", "sram_kib": 500, "flash_kib": 4096, field: value}
        (tmp_path / "t.json").write_text(json.dumps(fields))
        with pytest.raises(errors.CompileError, match=re.escape(f"field '{field}' must be a positive number at most")):
            compiler.load_target(str(tmp_path / "t.json"))

    def test_a_vela_ini_that_is_not_utf8_is_one_line_naming_it(self, tmp_path, capsys):
        ini = tmp_path / "latin1.ini"
        ini.write_bytes("[System_Config.Mine]\ncore_clock=1e8 # caf\xe9\n".encode("latin-1"))
        target = tmp_path / "board.json"
        target.write_text(json.dumps(dict(SMALL_BOARD, vela_ini=ini.name)))
        code, err = _run_main(deploy.main, ["--output_dir", str(tmp_path), "--target", str(target)], capsys)
        assert code == 1 and len(err) == 1, err
        assert f"vela.ini {ini} is not UTF-8 text (invalid continuation byte at byte 41)" in err[0], err


class TestCompileCache:
    def test_the_compile_cache_compiles_a_model_once_and_keeps_figures_by_structure(self, tmp_path):
        tool, target = _CountingTool(), compiler.Target("t", "ethos-u55-64", "S", "M")
        cache = compiler.CompileCache(str(tmp_path / "cache"), tool)
        model = tmp_path / "m.tflite"
        model.write_bytes(b"model bytes" * 100)
        structure = supernet.structure((0,) * 9, (32, 48))
        assert cache.structure(structure, target) is None
        first = cache.compile(str(model), target, str(tmp_path / "a"), structure)
        again = cache.compile(str(model), target, str(tmp_path / "b"))
        assert tool.compiles == 1 and first[1] == again[1] and (tmp_path / "b" / "m_vela.tflite").is_file()
        assert again[0]["compiled_model"] == str(tmp_path / "b" / "m_vela.tflite")
        assert cache.structure(structure, target)["per_layer"] == first[1]
        assert cache.structure(supernet.structure((0,) * 9, (48, 64)), target) is None  # another size: not the same
        model.write_bytes(b"other weights")  # other bytes of one structure: compiled, the figures replaced
        cache.compile(str(model), target, str(tmp_path / "c"), structure)
        assert tool.compiles == 2 and cache.structure(structure, target)["summary"]["sram_used_kib"] < 1
        (entry,) = (tmp_path / "cache").glob("*.json")
        figures = tmp_path / "cache" / "models" / json.loads(entry.read_text())["model_key"] / "figures.json"
        first = cache.compile(str(model), target, str(tmp_path / "c"))
        for damage in ("{", "[]", json.dumps({"per_layer": []})):  # damaged entries are compiled again
            entry.write_text(damage)
            assert cache.structure(structure, target) is None
            figures.write_text(damage)
            compiles = tool.compiles
            assert cache.compile(str(model), target, str(tmp_path / "d"), structure)[1] == first[1]
            assert tool.compiles == compiles + 1 and cache.structure(structure, target)["per_layer"] == first[1]
        figures.unlink()
        assert cache.compile(str(model), target, str(tmp_path / "e"))[1] == first[1] and figures.is_file()
        entry.write_text(json.dumps(dict(json.loads(entry.read_text()), compiler="counting 0.9")))
        with pytest.raises(errors.CompileError, match="made by counting 0.9, this is counting 1.0: remove it"):
            cache.structure(structure, target)

    def test_a_compile_finishing_second_uses_the_entry_another_process_put_first(self, tmp_path):
        class RacingTool(_CountingTool):
            def compile(self, model_path, target, out_dir):
                found = super().compile(model_path, target, out_dir)
                # meanwhile another process compiled the same model and renamed its work into place
                other = out_dir.rsplit(".tmp", 1)[0]
                super().compile(model_path, target, other)
                atomic_files.write_json_atomic(os.path.join(other, "figures.json"), {"summary": dict(
                    found[0], compiled_model=os.path.join(other, "m_vela.tflite")), "per_layer": found[1]})
                return found

        cache = compiler.CompileCache(str(tmp_path / "cache"), RacingTool())
        model = tmp_path / "m.tflite"
        model.write_bytes(b"model bytes" * 100)
        summary, per_layer = cache.compile(str(model), compiler.Target("t", "ethos-u55-64", "S", "M"),
                                           str(tmp_path / "out"))
        assert summary["compiled_model"] == str(tmp_path / "out" / "m_vela.tflite")
        assert (tmp_path / "out" / "m_vela.tflite").read_bytes() == model.read_bytes()[::-1]
        assert per_layer == [{"Name": "supernet/E0_conv", "Op Cycles": "1100"}]
        assert len(list((tmp_path / "cache" / "models").iterdir())) == 1  # the first entry, no work left

    def test_the_compile_cache_removes_what_killed_compiles_left(self, tmp_path):
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()  # a PID whose process has ended
        models = tmp_path / "cache" / "models"
        killed, running = models / f"abc.tmp{gone}", models / f"def.tmp{os.getpid()}"
        for work in (killed, running):
            work.mkdir(parents=True)
            (work / "model_vela.tflite").write_bytes(b"half")
        (tmp_path / "cache" / f"entry.json.tmp{gone}").write_text("{")
        compiler.CompileCache(str(tmp_path / "cache"), _CountingTool())
        assert not killed.exists() and running.is_dir()
        assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["models"]

    def test_a_failed_compile_leaves_no_work_folder_in_the_cache(self, tmp_path):
        class FailingTool(_CountingTool):
            def compile(self, model_path, target, out_dir):
                super().compile(model_path, target, out_dir)  # half of the output written, then it fails
                raise errors.CompileError(f"Vela failed on {model_path}: it broke")

        cache = compiler.CompileCache(str(tmp_path / "cache"), FailingTool())
        model = tmp_path / "m.tflite"
        model.write_bytes(b"model bytes")
        with pytest.raises(errors.CompileError, match="it broke"):
            cache.compile(str(model), compiler.Target("t", "ethos-u55-64", "S", "M"), str(tmp_path / "out"))
        assert not list((tmp_path / "cache" / "models").iterdir())

    def test_a_cache_hit_names_the_output_after_the_model_compiled(self, tmp_path):
        cache = compiler.CompileCache(str(tmp_path / "cache"), _CountingTool())
        target = compiler.Target("t", "ethos-u55-64", "S", "M")
        for name in ("first", "model_int8"):  # the same bytes under two names: one compile
            (tmp_path / f"{name}.tflite").write_bytes(b"int8 model" * 10)
        cache.compile(str(tmp_path / "first.tflite"), target, str(tmp_path / "a"))
        summary, _ = cache.compile(str(tmp_path / "model_int8.tflite"), target, str(tmp_path / "b"))
        assert cache.tool.compiles == 1 and summary["compiled_model"] == str(tmp_path / "b" / "model_int8_vela.tflite")
        assert sorted(os.listdir(tmp_path / "b")) == ["model_int8_vela.tflite"]
        assert (tmp_path / "b" / "model_int8_vela.tflite").read_bytes() == (b"int8 model" * 10)[::-1]


# ==== 31. edge_tables.py: the NPU latency table, each block beside its neighbour =====================================


# Vela 5.2.0's figures of subnets at 64x96 on the himax-we2 target (optimise Size), from its compile
# cache: cycles_total of the full compile, then the per-layer cycles summed by block (fixed, EB0 ...
# H2Out). H2's option 2 costs 22.2 M cycles beside H2Out's option 2 and 2.4 M beside the others.
HIMAX_64X96_COMPILES = {
    "000000000": (14524081, [4262461, 521530, 1243918, 4870112, 1416258, 62370, 1327254, 190892, 443848, 185438]),
    "111111111": (24216667, [4262461, 1043060, 2466188, 9628256, 2638528, 113680, 2127209, 290330, 1230699, 416256]),
    "222222222": (54704134, [4262461, 1564590, 3688458, 14386400, 3860798, 188138, 3404991, 438254, 22232320,
                             677724]),
    "010101010": (18555557, [4262461, 521530, 2466188, 4870112, 2638528, 62370, 2127209, 190892, 1230824, 185443]),
    "020202020": (23458866, [4262461, 521530, 3688458, 4870112, 3860798, 62370, 3404991, 190892, 2411922, 185332]),
    "101010101": (20195100, [4262461, 1043060, 1243918, 9628256, 1416258, 113680, 1327254, 290330, 443899, 425984]),
    "121212121": (29087503, [4262461, 1043060, 3688458, 9628256, 3860798, 113680, 3404991, 293038, 2410509, 382252]),
    "202020202": (26266479, [4262461, 1564590, 1243918, 14386400, 1416258, 188138, 1327254, 438254, 443878, 995328]),
    "212121212": (30224252, [4262461, 1564590, 2466188, 14386400, 2638528, 188138, 2127209, 438254, 1230884, 921600]),
}


HIMAX_64X96_HELD_OUT = {"020002220": 21261688, "022012221": 31036269, "100100121": 18533502, "111111222": 45627680}


class TestEdgeTables:
    def test_shared_layers_are_charged_to_the_block_that_decides_them(self):
        graph, _, _ = convert.build_static_graph((1, 2, 0, 0, 1, 0, 2, 0, 1), 32, 48)
        blocks = edge_tables.op_blocks(graph)
        assert blocks["supernet/add"] == blocks["supernet/add_1"] == "EB0"  # EB0's two residual adds
        assert blocks["supernet/add_2"] == "EB1" and blocks["supernet/Relu_4"] == "EB0"
        assert blocks["supernet/resize/ResizeBilinear"] == "DB0"
        assert blocks["supernet/resize_3/ResizeBilinear"] == "H0Out"
        assert blocks["flow"] == "H2Out" and blocks["supernet/Relu"] == edge_tables.FIXED
        assert edge_tables.arch_op_blocks((1, 2, 0, 0, 1, 0, 2, 0, 1)) == blocks  # built at 16x16: the same names
        names = ("supernet/EB1_rb3_conv21", "supernet/H1Out_k7_conv1", "supernet/Up2_conv", "supernet/add_3")
        assert [edge_tables.conv_block(n) for n in names] == ["EB1", "H1Out", edge_tables.FIXED, None]
        rows = [{"Name": "supernet/Relu_6;supernet/Down1_conv", "Op Cycles": "10"},
                {"Name": "supernet/Relu_3;supernet/add_1", "Op Cycles": "7"},
                {"Name": "supernet/H2_k3_conv1", "Op Cycles": "5"}, {"Name": "mystery", "Op Cycles": "2"}]
        cycles, unattributed = edge_tables.block_cycles(rows, blocks)
        assert (cycles[edge_tables.FIXED], cycles["EB0"], cycles["H2"], unattributed) == (12.0, 7.0, 5.0, 1)

    def test_table_predicts_each_block_beside_its_context_and_checks_its_file(self, tmp_path):
        rng = np.random.default_rng(0)
        blocks, context = supernet.SPACE.blocks, edge_tables.context_blocks()
        assert context["H2"] == "H2Out" and context["H2Out"] == "H2" and context["EB0"] == "EB1"
        cost = {(b, o, c): float(rng.integers(1, 10 ** 6)) for b in blocks for o in range(3) for c in range(3)}

        def cycles_of(arch):  # each block's cycles depend on its own option and its context block's
            option = dict(zip(blocks, arch))
            return {b: cost[(b, option[b], option[context[b]])] for b in blocks}

        archs = edge_tables.table_archs()
        assert len(set(archs)) == 9 and archs[:3] == [supernet.uniform_arch(k) for k in range(3)]
        measurements = [{"arch": a, "summary": {"clock_hz": 5e8}, "unattributed": 0,
                         "cycles": {edge_tables.FIXED: 1000.0 + i, **cycles_of(a)}} for i, a in enumerate(archs)]
        target = compiler.Target("t", "ethos-u55-64", "S", "M")
        table = edge_tables.make_latency_table(measurements, target, 64, 96)
        for arch in supernet.random_archs(20, 1):
            by_hand = 1004.0 + sum(cycles_of(arch).values())
            assert edge_tables.predict_fps(table, arch) == pytest.approx(5e8 / by_hand, rel=1e-12)
        with pytest.raises(errors.ExportError, match="never choose every option of EB0 beside every one of EB1"):
            edge_tables.make_latency_table(measurements[:3], target, 64, 96)
        path = tmp_path / "latency.json"
        path.write_text(json.dumps(table))
        assert edge_tables.load_latency_table(str(path)) == table
        for broken in ({**table, "format": "other"}, {**table, "input_size": [64]},
                       {**table, "block_cycles": {**table["block_cycles"], "H2": [1.0, 2.0, 3.0]}},
                       {**table, "context_blocks": {**table["context_blocks"], "H2": "H1"}}, [1, 2]):
            path.write_text(json.dumps(broken))
            with pytest.raises(errors.ExportError, match=str(path)):
                edge_tables.load_latency_table(str(path))
        for broken in ({**table, "fixed_cycles": 0.0, "block_cycles": {b: [[0.0] * 3] * 3 for b in blocks}},
                       {**table, "space_version": "9blocks-other"}):
            path.write_text(json.dumps(broken))
            with pytest.raises(errors.ExportError, match="fixed_cycles|search space"):
                edge_tables.load_latency_table(str(path))
        path.write_text("{not json")
        with pytest.raises(errors.CheckpointError, match="unreadable"):
            edge_tables.load_latency_table(str(path))

    def test_the_table_check_reports_each_largest_error_and_any_sram_shortfall(self):
        blocks = supernet.SPACE.blocks
        table = {"clock_hz": 1e6, "fixed_cycles": 1000.0, "context_blocks": edge_tables.context_blocks(),
                 "block_cycles": {b: [[c] * 3 for c in (10.0, 20.0, 40.0)] for b in blocks}}
        costs = {(32, 48): {"sram_kib": [100.0, 110.0, 120.0], "latency_table": table,
                            "flash": {"intercept_kib": 50.0, "kib_per_param": 0.001}}}
        low, high = (0,) * 9, (2,) + (0,) * 8  # predicted SRAM 100 and 120 KiB
        flash = {a: 50.0 + 0.001 * supernet.count_params(a) for a in (low, high)}
        cycles = {low: 1000.0 + 9 * 10, high: 1000.0 + 40 + 8 * 10}
        measured = [{"arch": low, "size": [32, 48], "summary": {"sram_used_kib": 97.0, "off_chip_flash_used_kib":
                                                                flash[low] + 3.0, "cycles_total": cycles[low] * 1.5}},
                    {"arch": high, "size": [32, 48], "summary": {"sram_used_kib": 125.0, "off_chip_flash_used_kib":
                                                                 flash[high] - 7.0, "cycles_total": cycles[high]}}]
        check = edge_tables.check_costs(costs, measured)
        assert check["sram_max_error_kib"] == pytest.approx(5.0) and check["sram_under_kib"] == pytest.approx(5.0)
        assert check["flash_max_error_kib"] == pytest.approx(7.0)
        assert check["cycles_max_error_pct"] == pytest.approx(100 * (1 - 1 / 1.5))
        line = deploy.describe_check(check)
        assert line == ("tables against 2 full compiles at 32x48: SRAM within 5.0 KiB (under by at most 5.0), "
                        "flash within 7.0 KiB (under by at most 3.0), cycles within 33.3%")

    def test_h2_beside_h2out_is_predicted_as_vela_compiles_the_whole_model(self):
        def record(code):
            arch = tuple(int(c) for c in code)
            cycles = dict(zip((edge_tables.FIXED, *supernet.SPACE.blocks), HIMAX_64X96_COMPILES[code][1]))
            return {"arch": arch, "summary": {"clock_hz": 4e8}, "unattributed": 0, "cycles": cycles}

        measurements = [record("".join(map(str, a))) for a in edge_tables.table_archs()]
        table = edge_tables.make_latency_table(measurements, compiler.load_target("himax-we2"), 64, 96)
        uniform = {k: measurements[k]["cycles"] for k in range(3)}  # all-0, all-1, all-2: the additive table
        for code, compiled in HIMAX_64X96_HELD_OUT.items():
            arch = tuple(int(c) for c in code)
            assert edge_tables.predict_cycles(table, arch) == pytest.approx(compiled, rel=0.001), code
            additive = uniform[0][edge_tables.FIXED] + sum(uniform[o][b] for b, o in zip(supernet.SPACE.blocks, arch))
            if arch[-2:] == (2, 0):  # H2's 7x7 before H2Out's 3x3: the additive table reads it beside a 7x7
                assert additive > 1.5 * compiled


# ==== 32. deploy.py: fit a board: the best (arch, input size) in INT8 within its budgets =============================


def _fill_disk_at(monkeypatch, ending):
    """atomic_files.write_atomic fails as a full disk would for paths ending in `ending`; returns the real one."""
    write_atomic = atomic_files.write_atomic

    def full_disk(path, content):
        if path.endswith(ending):
            raise errors.OutputError(f"cannot write {path}: No space left on device")
        return write_atomic(path, content)

    monkeypatch.setattr(atomic_files, "write_atomic", full_disk)
    return write_atomic


def _deploy_flags(export_run, target):
    """deploy.py's flags on the exported tiny run at 32x48 (2 INT8 members, TFLM on 2 pairs)."""
    return ["--output_dir", str(export_run), "--experiment_name", "whole", "--target", str(target), "--sizes", "32x48",
            "--int8_top", "2", "--tflm_samples", "2"]


@pytest.fixture(scope="class")
def small_deployment(export_run, tmp_path_factory):
    """deploy.py on the small board as a user types it (a process of its own, 3 INT8 members), once for
    the tests that read it, start it again, kill it or choose by the other rule: (flags, the process's
    result, the report it wrote or None)."""
    flags = _deploy_flags(export_run, _board_file(tmp_path_factory.mktemp("board"), "small")) + ["--int8_top", "3"]
    result = subprocess.run([sys.executable, str(HERE / "deploy.py"), *flags], capture_output=True, text=True,
                            cwd=HERE, env=user_env())
    path = export_run / "whole" / "deploy_small" / "deploy_report.json"
    return flags, result, json.loads(path.read_text()) if result.returncode == 0 else None


def _board_file(folder, name):
    """A target JSON file of the small board under another name: its own deployment folder."""
    path = pathlib.Path(folder) / f"{name}.json"
    path.write_text(json.dumps(dict(SMALL_BOARD, name=name)))
    return path


def _summary_member(arch, epe, epe_int8, zero, pairs=20):
    """An INT8 member of the board front as deployment.int8_scores and choose leave it."""
    return {"arch": arch, "size": [32, 48], "epe": epe, "epe_int8": epe_int8, "int8_loss": epe_int8 - epe,
            "fps": 100.0, "npu_figures": "compile", "flash_kib": 2000.0, "gmacs": 0.1, "within_noise": False,
            "epe_int8_se": None,
            "int8_samples": np.zeros(pairs), "zero_flow_epe": zero, "fp32_worse_than_zero_flow": epe > zero}


class TestDeployCommand:
    """Every deployment of the suite's tiny run, in one class so that they run on one worker: the board's
    tables at 32x48 (nine INT8 conversions and compiles) are made once and read from the compile cache after."""

    def test_deploy_settings_out_of_range_are_named(self):
        for flags, words in ((["--progress_every", "nan"], "--progress_every a number > 0"),
                             (["--check", "-1"], "--check must be >= 0"),
                             (["--compile_cache", " "], "key 'deploy.compile_cache' must name a folder"),
                             (["--int8_top", "0"], "key 'deploy.int8_top' must be > 0")):
            with pytest.raises(errors.ConfigError, match=re.escape(words)):
                deploy.settings_of(deploy.parse_args(["--target", "himax-we2", *flags]))
        assert deploy.settings_of(deploy.parse_args(["--target", "himax-we2"])) == config.defaults()["deploy"]

    @pytest.mark.slow
    def test_deploy_fits_the_board_and_hands_firmware_what_it_needs(self, export_run, small_deployment, tmp_path,
                                                                    capsys):
        flags, result, report = small_deployment
        assert result.returncode == 0, result.stderr
        assert all(PROGRAM_LINES.match(line) for line in result.stderr.splitlines()), result.stderr  # nothing of TF's
        (tmp_path / "none.json").write_text(json.dumps(dict(SMALL_BOARD, name="none", sram_kib=1)))
        capsys.readouterr()
        assert deploy.main(_deploy_flags(export_run, tmp_path / "none.json")) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert re.match(r"error: nothing fits target none: the smallest SRAM among the sizes tried is [\d.]+ KiB at "
                        r"32x48, the budget is 1 KiB", err)
        assert not (export_run / "whole" / "deploy_none").exists()
        folder = export_run / "whole" / "deploy_small"
        assert report["input_size"] == [32, 48] and report["cpu_ops"] == 0 and report["sram_kib"] <= 140
        assert report["vela_version"] == "vela 5.2.0" and report["target"]["name"] == "small"
        assert set(report["tflm"]) >= {"arena_bytes", "max_step_diff", "share_differing", "epe"}
        # TFLM's arithmetic is TFLite's reference kernels
        assert report["tflm"]["vs_tflite_reference_kernels"]["max_step_diff"] == 0
        assert f"--arch {report['arch']} --input_h 32 --input_w 48" in result.stdout
        # an independent Vela run on the INT8 model written: within the budget
        vela = subprocess.run([os.path.join(os.path.dirname(sys.executable), "vela"),
                               str(folder / "model_int8.tflite"),
                               "--output-dir", str(tmp_path / "vela"), "--accelerator-config", "ethos-u55-64",
                               "--system-config", "Ethos_U55_High_End_Embedded", "--memory-mode", "Shared_Sram",
                               "--config", "Arm/vela.ini"], capture_output=True, text=True)
        summary = next(csv.DictReader(open(next((tmp_path / "vela").glob("*_summary_*.csv")))))
        assert vela.returncode == 0 and float(summary["sram_memory_used"]) <= 140
        assert float(summary["inferences_per_second"]) == pytest.approx(report["fps"], rel=1e-6)
        # TFLM run by hand on the reference input reproduces the reference output bit for bit
        from tflite_micro import runtime
        interpreter = runtime.Interpreter.from_file(str(folder / "model_int8.tflite"))
        interpreter.set_input(np.load(folder / "reference_input.npy"), 0)
        interpreter.invoke()
        assert np.array_equal(interpreter.get_output(0), np.load(folder / "reference_output.npy"))
        source = (folder / "model_vela.cc").read_text()
        assert f"model_vela_len = {os.path.getsize(folder / 'vela' / 'model_int8_vela.tflite')};" in source
        readme = (folder / "README.txt").read_text()
        assert "Input: int8 [1, 32, 48, 6]" in readme and "Output: int8 [1, 32, 48, 2]" in readme
        assert "flow = (q - (" in readme
        # export.py's INT8 EPE of the choice at its size, on the same frames: the same number
        assert export.main(["--output_dir", str(export_run), "--experiment_name", "whole", "--arch", report["arch"],
                            "--repeats", "1", "--warmup", "0"]) == 0
        exported = json.loads((export_run / "whole" / ("export_" + report["arch"].replace(",", ""))
                               / "export_report.json").read_text())
        assert exported["agreement"]["epe_int8"] == pytest.approx(report["epe_int8"], rel=1e-6)
        # started again: the same report, and no compile repeated; a kept INT8 model damaged (truncated, its
        # flow garbage) is converted again, never handed to the interpreter
        cache = export_run / "compile_cache" / "models"
        compiled = sorted(p.name for p in cache.iterdir())
        kept = [next((export_run / "whole" / "deploy_int8").glob(
            f"*/{m['arch'].replace(',', '')}_{m['size'][0]}x{m['size'][1]}.tflite")) for m in report["int8_members"]]
        kept[0].write_bytes(kept[0].read_bytes()[:100])
        pathlib.Path(f"{kept[-1]}.npy").write_bytes(b"garbage")
        assert deploy.main(flags) == 0
        again = json.loads((folder / "deploy_report.json").read_text())
        assert {k: v for k, v in again.items() if k not in ("seconds", "devices")} == {
            k: v for k, v in report.items() if k not in ("seconds", "devices")}
        assert sorted(p.name for p in cache.iterdir()) == compiled
        assert kept[0].stat().st_size > 100 and pathlib.Path(f"{kept[-1]}.npy").read_bytes() != b"garbage"


    @pytest.mark.slow
    def test_a_killed_or_failed_deployment_leaves_the_last_one_whole(self, export_run, small_deployment, capsys,
                                                                    monkeypatch):
        flags, result, _ = small_deployment
        assert result.returncode == 0, result.stderr
        run = export_run / "whole"
        folder = run / "deploy_small"
        last = _folder_bytes(folder)
        assert {"deploy_report.json", "model_vela.cc", "README.txt", "model_int8.tflite"} <= set(last)
        # killed once its new export is written: the last deployment is still all there
        killed = subprocess.Popen([sys.executable, str(HERE / "deploy.py"), *flags, "--tflm_samples", "1"], cwd=HERE,
                                  env=user_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        building = run / f"deploy_small.tmp{killed.pid}"
        deadline = time.time() + 900
        while not (building / "export_report.json").exists() and killed.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert building.is_dir() and _folder_bytes(folder) == last
        # the disk full while model_vela.cc is written: one line, and still the last deployment
        _fill_disk_at(monkeypatch, "model_vela.cc")
        code, err = _run_main(deploy.main, flags + ["--tflm_samples", "1"], capsys)
        assert code == 1 and len(err) == 1 and "model_vela.cc: No space left on device" in err[0], err
        assert _folder_bytes(folder) == last
        assert not list(run.glob("deploy_small.tmp*"))  # its own temp folder and the killed one's

    @pytest.mark.slow
    def test_a_deployment_names_its_choice_and_the_lowest_int8_epe_in_print_and_report(self, export_run,
                                                                                      small_deployment, tmp_path,
                                                                                      capsys):
        _, result, report = small_deployment
        assert result.returncode == 0, result.stderr
        printed = result.stdout
        members = report["int8_members"]
        label = {id(m): f"{m['arch']} at {m['size'][0]}x{m['size'][1]}" for m in members}
        lowest = min(members, key=lambda m: m["epe_int8"])
        for m in members:  # each member tested against the lowest INT8 EPE with its paired SE
            assert m["within_noise"] == (m is lowest or m["epe_int8"] - lowest["epe_int8"] <= 2 * m["epe_int8_se"])
        fastest = max((m for m in members if m["within_noise"]), key=lambda m: m["fps"])
        choice = report["choice"]
        assert choice["chosen"]["member"] == label[id(fastest)] == f"{report['arch']} at 32x48"
        assert choice["lowest_epe"]["member"] == label[id(lowest)]
        assert (choice["rule"], choice["noise_se"]) == ("within_noise", 2.0) and choice["validation_pairs"] >= 2
        assert report["settings"]["choice_rule"] == "within_noise"
        assert f"choice (within_noise): {label[id(fastest)]} (INT8 EPE {fastest['epe_int8']:.4f}" in printed
        assert f"lowest INT8 EPE: {label[id(lowest)]} (INT8 EPE {lowest['epe_int8']:.4f}" in printed
        assert all(line in printed for line in choice["lines"])
        lowest_flags = _deploy_flags(export_run, _board_file(tmp_path, "lowest")) + ["--int8_top", "3"]
        assert deploy.main(lowest_flags + ["--choice_rule", "lowest_epe"]) == 0  # the old rule: the lowest INT8 EPE
        printed = capsys.readouterr().out
        old = json.loads((export_run / "whole" / "deploy_lowest" / "deploy_report.json").read_text())
        assert f"{old['arch']} at 32x48" == label[id(lowest)] == old["choice"]["chosen"]["member"]
        assert old["settings"]["choice_rule"] == "lowest_epe" and "choice (lowest_epe): " in printed


    @pytest.mark.slow
    def test_the_latency_table_from_a_fair_cycle_predicts_the_members_full_compiles(self, small_deployment):
        _, result, report = small_deployment
        assert result.returncode == 0, result.stderr
        table = report["size_costs"]["32x48"]["latency_table"]  # from full compiles of the fair cycle's subnets
        cycle = [supernet.format_arch(a) for a in edge_tables.table_archs()]
        assert table["source_archs"] == cycle and table["unattributed_rows"] == 0
        members = [m for m in report["int8_members"] if m["arch"] not in cycle]
        assert members and all(m["npu_figures"] == "compile" for m in members)  # each compiled in full
        check = edge_tables.check_table(table, [{"arch": supernet.parse_arch(m["arch"]), "summary": m}
                                                for m in members])
        assert check["max_abs_error_pct"] < 2.0, check

    @pytest.mark.slow
    def test_the_refined_choice_is_what_is_exported_and_the_report_names_the_refined_figures(
            self, export_run, tmp_path, capsys):
        run = export_run / "whole"
        flags = _deploy_flags(export_run, _board_file(tmp_path, "refined")) + [
            "--refine", "2", "--refine_steps", "2", "--refine_epochs", "2"]
        capsys.readouterr()
        assert deploy.main(flags) == 0
        out = capsys.readouterr().out
        folder = run / "deploy_refined"
        report = json.loads((folder / "deploy_report.json").read_text())
        refined = report["refine"]
        assert refined["settings"] == {"top": 2, "steps": 2, "epochs": 2, "lr_scale": 1.0}
        assert refined["start"] == report["checkpoint"] == ckpt.load_meta(str(run), "best")["prefix"]
        # the members are the front's two lowest supernet FP32 EPE, each with its supernet EPE and its own child
        front = {f"{m['arch']} at 32x48": m["epe"] for m in report["front"]}
        rows = {r["member"]: r for r in refined["members"]}
        assert sorted(rows) == sorted(sorted(front, key=front.get)[:2])
        for name, row in rows.items():
            assert row["supernet_epe"] == front[name] and row["steps"] == 2
            assert row["change"] == pytest.approx(row["refined_epe"] - row["supernet_epe"], rel=1e-12)
            assert pathlib.Path(row["run"]) == run / "refine" / "runs" / (name[:17].replace(",", "") + "_n2_e2")
            assert f"EPE FP32 supernet {row['supernet_epe']:.4f}, refined {row['refined_epe']:.4f}" in out
        assert [r["refined_se"] is None for r in refined["members"]] == [True, False]
        # the choice is among the refined members, on their INT8 EPE, and exported from its child's last checkpoint
        chosen = rows[f"{report['arch']} at 32x48"]
        child = pathlib.Path(chosen["run"])
        assert report["epe"] == chosen["refined_epe"] and report["epe_int8"] == chosen["epe_int8"]
        assert report["exported_checkpoint"] == ckpt.load_meta(str(child), "last")["prefix"] != report["checkpoint"]
        assert "the choice is among them, on their refined INT8 EPE" in out
        exported = json.loads((folder / "export_report.json").read_text())
        assert exported["agreement"]["epe_tf"] == pytest.approx(chosen["refined_epe"], rel=1e-6)
        # independently: the child's recalibrated weights hold its last checkpoint's kernels, which are not the
        # supernet's; the exported FP32 model computes their static graph on the reference input, not the supernet's
        arch, settings = supernet.parse_arch(report["arch"]), report["settings"]
        data = batches.deployment_batches(batches.deployment_base(config.run_config(str(run)),
                                                                  settings["calibration_samples"]),
                                          (32, 48), settings["recal_at"] == "deploy")
        graph, placeholder, flow = convert.build_static_graph(arch, 32, 48)
        values = {}
        for name, where, kind in (("child", child, "last"), ("supernet", run, "best")):
            with convert.recalibration_session(str(where), kind, config.run_config(str(where)), data["recal"],
                                               size=(32, 48)) as recalibrate:
                values[name] = recalibrate(arch, convert.variable_names(graph))[1]
        saved, parent = _checkpoint_values(child, "last"), _checkpoint_values(run, "best")
        kernels = [n for n in values["child"] if not n.endswith(("moving_mean", "moving_variance"))]
        for name in kernels:
            np.testing.assert_array_equal(values["child"][name], saved[name], err_msg=name)
        assert any(not np.array_equal(saved[name], parent[name]) for name in kernels)
        predict = convert.tflite_predictor(str(folder / "model_int8.tflite"))
        scale, zero = predict.interpreter.get_input_details()[0]["quantization"]
        images = convert.dequantize(np.load(folder / "reference_input.npy"), scale, zero)
        got = convert.tflite_predictor(str(folder / "model_fp32.tflite"))(images)
        miss = {}
        for name, held in values.items():
            with tf.compat.v1.Session(graph=graph, config=tensorflow_quiet.session_config()) as sess:
                convert.load_values(sess, graph, held)
                miss[name] = float(np.abs(sess.run(flow, {placeholder: images}) - got).max())
        assert miss["child"] < 1e-4 < miss["supernet"], miss
        # started again: no child trained again, the same choice from the same weights
        assert deploy.main(flags) == 0
        assert "2 trained already, training 0" in capsys.readouterr().out
        again = json.loads((folder / "deploy_report.json").read_text())
        assert (again["arch"], again["exported_checkpoint"], again["refine"]) == (
            report["arch"], report["exported_checkpoint"], report["refine"])


class TestDeployOneWriter:
    def test_a_second_deployment_of_a_run_is_refused_in_one_line_before_any_compile(self, export_run, tmp_path,
                                                                                       capsys):
        run = export_run / "whole"
        flags = _deploy_flags(export_run, _board_file(tmp_path, "locked")) + ["--compile_cache", "cache_locked"]
        with ckpt.writer_lock(str(run / "deploy_int8"), "deployment"):  # what a first deployment holds
            code, err = _run_main(deploy.main, flags, capsys)
        assert code == 1 and len(err) == 1 and "is being written by another process" in err[0], err
        assert str(run / "deploy_int8") in err[0]
        assert not list((export_run / "cache_locked" / "models").iterdir())  # nothing compiled
        assert not list(run.glob("deploy_locked*"))


class TestDeploySummary:
    def _printed(self, members, capsys):
        pixels = np.full(len(members[0]["int8_samples"]), 100.0)
        choice, made = deployment.choose(members, pixels, config.defaults()["deploy"])
        found = {"front": members, "members": members, "choice": choice, "noise": made}
        tflm = {"samples": 8, "epe": 7.5, "tflite_epe_same_samples": 7.4, "max_step_diff": 1, "share_differing": 0.1,
                "vs_tflite_reference_kernels": {"max_step_diff": 0}, "arena_bytes": 1000}
        report = {"tflm": tflm, "sram_kib": 100.0, "flash_kib": 2000.0, "fps": 100.0, "cpu_ops": 0, "retrain": "cmd"}
        dep = types.SimpleNamespace(folder=lambda: "deploy_board")
        capsys.readouterr()
        deploy.print_summary(dep, found, choice, report)
        return capsys.readouterr().out

    def test_the_summary_warns_when_the_choice_is_worse_than_zero_flow(self, capsys):
        worse = [_summary_member("0,0,0,0,0,0,0,0,0", 7.88, 7.90, 7.65),
                 _summary_member("1,0,0,0,0,0,0,0,0", 7.80, 7.95, 7.65)]
        out = self._printed(worse, capsys)
        assert ("warning: the choice scores worse than zero flow (predicting no motion: EPE 7.6500): INT8 7.9000, "
                "FP32 7.8800; 2 of the 2 INT8 members do too") in out
        better = [_summary_member("0,0,0,0,0,0,0,0,0", 7.0, 7.1, 7.65), _summary_member("1,0,0,0,0,0,0,0,0",
                                                                                        7.2, 7.7, 7.65)]
        assert "warning" not in self._printed(better, capsys)
        fp32_only = [_summary_member("0,0,0,0,0,0,0,0,0", 7.7, 7.6, 7.65)]  # INT8 under, FP32 over: still told
        assert "warning: the choice scores worse than zero flow" in self._printed(fp32_only, capsys)

    def test_the_summary_says_what_each_epe_is_over_and_how_far_flash_may_miss(self, capsys):
        out = self._printed([_summary_member("0,0,0,0,0,0,0,0,0", 1.0, 1.1, 7.65)], capsys)
        assert "INT8 on all 20 validation pairs, best first:" in out
        assert "TFLM on the first 8 of those 20 pairs: EPE 7.5000 (TFLite on the same 8: 7.4000)" in out
        assert (f"flash predicted by the size's table, which can fall short of a full compile by up to "
                f"{deployment.FLASH_MISS_PCT:g}%") in out


class TestDeployRefine:
    def test_refine_flags_are_checked_in_one_line(self):
        hardware = {"gpus": []}
        for flags, words in ((["--refine", "-1"], "--refine K must be > 0 to refine (0: off), got -1"),
                             (["--refine_steps", "4"], "--refine K must be > 0 to refine (0: off), got 0 with "
                                                       "--refine_steps"),
                             (["--refine", "2", "--refine_steps", "3", "--refine_epochs", "2"],
                              "--refine_steps (3) must be a multiple of --refine_epochs (2)"),
                             (["--refine", "2", "--refine_epochs", "0"], "--refine_epochs must be > 0, got 0"),
                             (["--refine", "2", "--refine_lr_scale", "0"], "--refine_lr_scale must be > 0, got 0.0")):
            with pytest.raises(errors.ConfigError, match=re.escape(words)):
                deploy.refine_of(deploy.parse_args(["--target", "himax-we2", *flags]), hardware)
        assert deploy.refine_of(deploy.parse_args(["--target", "himax-we2"]), hardware) is None
        on = deploy.refine_of(deploy.parse_args(["--target", "himax-we2", "--refine", "1", "--refine_steps", "6",
                                                 "--refine_epochs", "3"]), hardware)
        assert on == {"settings": {"top": 1, "steps": 6, "epochs": 3, "lr_scale": 1.0}, "at_once": (1, 0)}


# ==== 33. deployment.py: the steps: sizes, scores at every size, the board's front, INT8, the choice =================


class TestDeploymentSteps:
    def test_sizes_keep_the_aspect_in_multiples_of_16_and_bad_sizes_are_named(self):
        assert deployment.candidate_sizes((64, 96)) == [(64, 96), (48, 64), (32, 48)]
        assert deployment.candidate_sizes((180, 240))[:3] == [(176, 224), (160, 208), (144, 192)]
        assert all(h % 16 == 0 and w % 16 == 0 for h, w in deployment.candidate_sizes((436, 1024)))
        assert deployment.parse_sizes("32x48, 48x64") == [(48, 64), (32, 48)]
        for text, words in (("30x40", "h=30"), ("32by48", "not HxW"), ("32x48,32x48", "given twice"),
                            ("8x8", "from 16 to 4096"), ("32x8192", "w=8192")):
            with pytest.raises(errors.DeployError, match=words):
                deployment.parse_sizes(text)

    def test_a_deployment_opens_one_recalibration_session_per_checkpoint_and_size_and_closes_them(self, monkeypatch):
        opened, closed = [], []

        @contextlib.contextmanager
        def session(run_dir, kind, cfg, recal_batches, size):
            opened.append((run_dir, kind, recal_batches, size))
            yield lambda arch, names: (None, {n: len(opened) for n in names})
            closed.append((run_dir, size))

        monkeypatch.setattr(convert, "recalibration_session", session)
        dep = deployment.Deployment("run", "best", {"input_h": 32, "input_w": 48}, None, None, {"recal_at": "run"},
                                    {}, sized={(32, 48): {"recal": "at 32x48"}, (16, 32): {"recal": "at 32x48 too"}})
        child = dataclasses.replace(dep, run_dir="child", kind="last")
        calls = [dep.recalibrator((32, 48)), dep.recalibrator((16, 32)), child.recalibrator((16, 32)),
                 dep.recalibrator((32, 48))]
        assert calls[0] is calls[1] is calls[3] and calls[2] is not calls[0]
        assert opened == [("run", "best", "at 32x48", (32, 48)), ("child", "last", "at 32x48 too", (32, 48))]
        deployed = dataclasses.replace(dep, settings={"recal_at": "deploy"}, recalibrators={})
        deployed.recalibrator((16, 32))
        assert opened[-1] == ("run", "best", "at 32x48 too", (16, 32)) and not closed
        dep.close()
        assert sorted(closed) == [("child", (32, 48)), ("run", (16, 32)), ("run", (32, 48))]

    def test_a_full_disk_during_int8_leaves_no_uncommitted_file(self, tmp_path, monkeypatch):
        """deployment.int8_model with the conversion replaced by fixed bytes: a model write that fails
        leaves none of its pair; one that succeeds commits the pair as written."""
        flow = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
        monkeypatch.setattr(convert, "static_models", lambda *args, **kwargs: {"int8": b"int8 model",
                                                                               "tf_outputs": [flow]})
        dep = types.SimpleNamespace(int8_folder=lambda: str(tmp_path / "int8"), inputs=lambda size: {
            "recal": [], "calibration": [], "val": []}, recalibrator=lambda size: lambda arch, names: (None, {}))
        write_atomic = _fill_disk_at(monkeypatch, ".tflite")
        with pytest.raises(errors.OutputError, match="No space left"):
            deployment.int8_model(dep, (0,) * 9, (32, 48))
        assert not list((tmp_path / "int8").iterdir())
        monkeypatch.setattr(atomic_files, "write_atomic", write_atomic)
        path = pathlib.Path(deployment.int8_model(dep, (0,) * 9, (32, 48)))
        assert path.read_bytes() == b"int8 model" and np.array_equal(np.load(f"{path}.npy"), flow)
        assert pathlib.Path(f"{path}.sha256").read_text() == hashlib.sha256(
            b"int8 model" + pathlib.Path(f"{path}.npy").read_bytes()).hexdigest()

    def test_a_cached_compile_replaces_the_table_and_the_members_are_compiled(self, tmp_path):
        class SummaryTool(_CountingTool):  # a compile's figures from the model's bytes: 1 FPS per byte
            def compile(self, model_path, target, out_dir):
                summary, rows = super().compile(model_path, target, out_dir)
                size = os.path.getsize(model_path)
                return dict(summary, off_chip_flash_used_kib=1.0, cycles_total=1e6 / size, fps=float(size)), rows

        target = compiler.Target("t", "ethos-u55-64", "S", "M", sram_kib=500, flash_kib=4096, min_fps=50)
        dep = types.SimpleNamespace(cache=compiler.CompileCache(str(tmp_path / "cache"), SummaryTool()),
                                    target=target)
        costs = {"sram_kib": [100.0] * 3, "flash": {"intercept_kib": 10.0, "kib_per_param": 0.0},
                 "latency_table": {"clock_hz": 1e6, "fixed_cycles": 1e4,
                                   "context_blocks": edge_tables.context_blocks(),
                                   "block_cycles": {b: [[0.0] * 3] * 3 for b in supernet.SPACE.blocks}}}
        compiled, table_only = (0,) * 9, (1,) * 9
        models = {}
        for arch, length in ((compiled, 40), (table_only, 30)):
            models[arch] = tmp_path / f"{length}.tflite"
            models[arch].write_bytes(b"x" * length)
        dep.cache.compile(str(models[compiled]), target, str(tmp_path / "out"), supernet.structure(compiled, (32, 48)))
        rows = deployment.board_rows(dep, {(32, 48): {supernet.arch_to_index(a): {"epe": 1.0}
                                                       for a in (compiled, table_only)}}, {(32, 48): costs})
        by_arch = {r["arch"]: r for r in rows}
        first, second = by_arch[supernet.format_arch(compiled)], by_arch[supernet.format_arch(table_only)]
        assert (first["npu_figures"], first["fps"], first["misses"]) == ("compile", 40.0, "40.0 FPS < 50")
        assert (second["npu_figures"], second["fps"], second["misses"]) == ("table", 100.0, "")
        member = dict(second, int8_model=str(models[table_only]))
        deployment.compile_members(dep, [member], rows, lambda line: None)
        for row in (member, second):
            assert (row["npu_figures"], row["fps"], row["cycles"], row["misses"]) == (
                "compile", 30.0, pytest.approx(1e6 / 30), "30.0 FPS < 50")

    @pytest.mark.slow
    def test_the_runs_own_size_is_scored_once_whichever_command_asks(self, export_run, tmp_path, monkeypatch):
        out = tmp_path / "out"
        shutil.copytree(export_run / "whole", out / "whole", ignore=shutil.ignore_patterns("search_*", "deploy*"))
        common = ["--output_dir", str(out), "--experiment_name", "whole"]
        assert search.main(common) == 0  # make search: the whole space at the run's size, 32x48
        searched = {arch: float(r["epe"]) for arch, r in _scores(out / "whole" / "search_best" / "scores.csv").items()}

        def scored_again(*args):
            raise AssertionError("scored again")

        monkeypatch.setattr(search_parts, "score_part", scored_again)
        board = _board_file(tmp_path, "board")
        for recal_at in ("run", "deploy"):  # at the run's own size both recalibrate on the same batches
            dep = deploy.open_deployment(deploy.parse_args(common + ["--target", str(board), "--recal_at", recal_at]))
            scores = deployment.score_size(dep, (32, 48), 10.0)
            assert {supernet.format_arch(supernet.index_to_arch(i)): m["epe"] for i, m in scores.items()} == searched
        assert search.main(common + ["--size", "32x48"]) == 0  # search.py asked for the run's size: the same search
        assert [p.name for p in (out / "whole").glob("search_*")] == ["search_best"]
        dep = deploy.open_deployment(deploy.parse_args(common + ["--target", str(board)]))
        dep.cfg = dict(dep.cfg, bn_recal_batches=dep.cfg["bn_recal_batches"] + 1)  # other inputs: another search
        with pytest.raises(AssertionError, match="scored again"):
            deployment.score_size(dep, (32, 48), 10.0)
        assert (out / "whole" / "search_best_at32x48").is_dir()


class TestDeploymentRefineSummary:
    def test_refined_members_are_reported_lowest_refined_first_with_paired_errors_by_numpy(self):
        rng = np.random.default_rng(3)
        pixels = np.full(6, 100.0)
        members = []
        for arch, epe, supernet_epe in (("1,0,0,0,0,0,0,0,0", 2.5, 2.0), ("0,0,0,0,0,0,0,0,0", 2.1, 2.2),
                                        ("2,0,0,0,0,0,0,0,0", 2.3, 1.9)):
            samples = rng.normal(epe, 0.2, 6) * 100
            members.append({"arch": arch, "size": [32, 48], "epe": samples.sum() / 600, "supernet_epe": supernet_epe,
                            "fp32_samples": list(samples), "epe_int8": epe + 0.1, "epe_int8_se": 0.01,
                            "refined_run": f"runs/{arch}", "refined_steps": 2})
        summary = deployment.refine_summary(members, pixels, {"top": 3, "steps": 2, "epochs": 1, "lr_scale": 1.0},
                                             "best/model-4")
        rows = summary["members"]
        order = sorted(members, key=lambda m: m["epe"])
        assert [r["member"] for r in rows] == [f"{m['arch']} at 32x48" for m in order]
        assert rows[0]["refined_se"] is None
        lowest = np.array(order[0]["fp32_samples"]) / 100
        for row, member in zip(rows[1:], order[1:]):
            diff = np.array(member["fp32_samples"]) / 100 - lowest
            assert row["refined_se"] == pytest.approx(np.std(diff, ddof=1) / np.sqrt(6), rel=1e-12)
        for row, member in zip(rows, order):
            assert row["change"] == pytest.approx(member["epe"] - member["supernet_epe"], rel=1e-12)
            assert (row["refined_epe"], row["supernet_epe"], row["run"]) == (
                member["epe"], member["supernet_epe"], member["refined_run"])
        lines = deployment.refine_lines(summary)
        assert lines[0].startswith("refined: the front's 3 lowest FP32 EPE, each refined 2 steps (1 epochs) "
                                   "from best/model-4")
        assert f"paired SE {rows[1]['refined_se']:.4f} vs the lowest refined" in lines[2]
        assert "paired SE" not in lines[1]


# ==== 34. firmware.py: what a port needs =============================================================================


class TestFirmware:
    def test_c_array_holds_the_bytes_aligned(self):
        data = bytes(range(256)) * 3 + b"\x07"
        source, header = firmware.c_array(data, "model_vela")
        assert "alignas(16) const unsigned char model_vela[]" in source and f"model_vela_len = {len(data)};" in source
        body = source[source.index("{") + 1:source.index("}")]
        assert bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", body)) == data
        assert "extern const unsigned char model_vela[];" in header
        assert "extern const unsigned int model_vela_len;" in header


# ==== 35. rank.py: subnets trained alone against the supernet's order; the margin of two runs ========================


STANDALONE_ARCH = "0,1,2,0,1,2,0,1,2"


def _write_scores(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "gmacs", "epe"])
        writer.writerows(rows)
    return str(path)


def _checkpoint_values(run_dir, kind):
    """{variable name: value} of a run's checkpoint, read from its files."""
    meta = ckpt.load_meta(str(run_dir), kind)
    reader = tf.train.load_checkpoint(meta["prefix"])
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(meta["prefix"])}


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    """A tiny supernet, three subnets trained alone by rank.py --train, and rank.py's report."""
    out = tmp_path_factory.mktemp("rank")
    assert train.main(RUN_FLAGS + ["--output_dir", str(out), "--experiment_name", "sup", "--num_epochs", "1",
                                   "--steps_per_epoch", "1", "--eval_batches", "0"]) == 0
    report_dir = out / "sup" / "standalone"
    jobs = min(2, len(parallel.usable_cores()))  # the four runs (three and one second seed) two at a time
    assert rank.main(["--supernet", str(out / "sup"), "--train", "3", "--bootstrap", "50", "--jobs", str(jobs)]) == 0
    return out, json.loads((report_dir / "rank_report.json").read_text())


class TestRankStudy:
    @pytest.mark.slow
    def test_standalone_run_inherits_resumes_and_evaluates(self, study_runs, tmp_path, capsys):
        out, _ = study_runs
        arch = supernet.parse_arch(STANDALONE_ARCH)
        common = RUN_FLAGS + ["--output_dir", str(tmp_path), "--experiment_name", "alone", "--learning_rate", "0"]
        inherit = ["--arch", STANDALONE_ARCH, "--init_from", str(out / "sup"), "--num_epochs", "1"]
        # a source that cannot be inherited is refused by a dry run already
        other = next(p for p in (out / "sup" / "standalone").iterdir()
                     if p.name.startswith("standalone_") and p.name != ranking.standalone_name(arch))
        for source in (tmp_path / "nowhere", other):  # no run; a subnet without this one's layers
            code, err = _run_main(train.main, common + inherit[:3] + [str(source), "--dry_run"], capsys)
            assert code == 1 and len(err) == 1 and str(source) in err[0], err
        assert train.main(common + inherit) == 0
        run = tmp_path / "alone"
        inherited, source = _checkpoint_values(run, "last"), _checkpoint_values(out / "sup", "best")
        weights = [k for k in inherited if k.startswith("supernet/") and "Adam" not in k
                   and not k.endswith(("moving_mean", "moving_variance"))]
        # only the subnet's layers exist, and learning rate 0 leaves them at the supernet's values
        assert sum(inherited[k].size for k in weights) == supernet.count_params(arch, 32, 48)
        for name in weights:
            np.testing.assert_array_equal(inherited[name], source[name], err_msg=name)
        assert train.main(["--resume", "--output_dir", str(tmp_path), "--experiment_name", "alone",
                           "--num_epochs", "2"]) == 0
        report = json.loads((run / "train_report.json").read_text())
        assert report["mode"] == "standalone" and report["arch"] == STANDALONE_ARCH and report["global_step"] == 4
        assert report["fairness_counts"]["H2Out"] == {"0": 0, "1": 0, "2": 4}
        assert json.loads((run / "config.json").read_text())["arch"] == STANDALONE_ARCH
        meta = json.loads((run / "checkpoints/last/meta.json").read_text())
        assert meta["mode"] == "standalone" and meta["arch"] == STANDALONE_ARCH
        assert json.loads((run / "eval_pool_1.json").read_text())["archs"] == [STANDALONE_ARCH]
        assert [r["epoch"] for r in _history(run / "eval_history.csv")] == ["1", "2"]
        log = (run / "train.log").read_text()
        assert f"{supernet.count_params(arch, 32, 48):,} parameters" in log and "initialised" in log
        capsys.readouterr()
        assert evaluate.main(["--output_dir", str(tmp_path), "--experiment_name", "alone"]) == 0
        result = json.loads((run / "supernet_eval_result_best.json").read_text())
        assert [r["arch"] for r in result["archs"]] == [STANDALONE_ARCH] and result["summary"]["mode"] == "standalone"
        assert result["archs"][0]["epe"] == pytest.approx(report["best_metric"], rel=1e-5)
        assert evaluate.main(["--output_dir", str(tmp_path), "--experiment_name", "alone",
                              "--arch", "0,0,0,0,0,0,0,0,0"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "standalone run of " + STANDALONE_ARCH in err and err.count("\n") == 1

    @pytest.mark.slow
    def test_rank_report_rescores_each_run_like_evaluate(self, study_runs, capsys):
        out, report = study_runs
        assert report["num_archs"] == 3 and (out / "sup" / "standalone" / "rank.png").stat().st_size > 1000
        archs = [r["arch"] for r in report["archs"]]
        arch_flags = [flag for a in archs for flag in ("--arch", a)]
        assert evaluate.main(["--output_dir", str(out), "--experiment_name", "sup"] + arch_flags) == 0
        scored = json.loads((out / "sup/supernet_eval_result_best.json").read_text())["archs"]
        by_supernet = {r["arch"]: r["epe"] for r in scored}
        for row in report["archs"]:
            assert row["supernet_epe"] == pytest.approx(by_supernet[row["arch"]], rel=1e-5)
            assert row["standalone_updates"] == 1
        row = report["archs"][0]
        run = pathlib.Path(row["run"])
        assert evaluate.main(["--output_dir", str(run.parent), "--experiment_name", run.name]) == 0
        alone = json.loads((run / "supernet_eval_result_best.json").read_text())["archs"][0]["epe"]
        assert row["standalone_epe"] == pytest.approx(alone, rel=1e-5)
        from scipy import stats as scipy_stats
        tau, _ = scipy_stats.kendalltau([r["supernet_epe"] for r in report["archs"]],
                                          [r["standalone_epe"] for r in report["archs"]])
        assert report["kendall_tau_b"] == pytest.approx(tau)
        noise = report["noise_floor"]
        assert noise["validation_batches"] == 2 and len(noise["standalone_batch_std"]) == 3
        assert [r["epoch"] for r in report["training_length"]] == [1]
        assert report["training_length"][0]["tau_vs_final_standalone"] == pytest.approx(1.0)
        assert report["bn_recal_batches"] == config.run_config(str(out / "sup"))["bn_recal_batches"]
        # every run trained alone, the second seeds' too, has its stopping figures (one evaluation: none)
        seconds = [p for p in (out / "sup" / "standalone").iterdir() if p.is_dir() and "_seed" in p.name]
        assert sorted(report["stopping"]["runs"]) == sorted([r["run"] for r in report["archs"]]
                                                             + [str(p) for p in seconds]) and seconds
        assert not report["stopping"]["stopped"] and not report["stopping"]["still_falling"]
        assert report["stopping"]["tau_if_improved"] is None  # nothing falling: nothing to bound
        assert [r["run"] for r in report["second_seed_runs"]] == [str(p) for p in seconds]
        supernet_wall = json.loads((out / "sup" / "train_report.json").read_text())["wall_time_s"]
        assert report["study_seconds"] == {"supernet": supernet_wall, "search": None,
                                           "standalone runs": report["training_seconds"], "ranking": report["seconds"]}
        if tensorflow_quiet.USER_LOG_LEVEL is None:  # each child held TensorFlow's start-up lines back itself
            logs = [p.read_text() for p in (out / "sup" / "standalone").glob("*.out")]
            assert logs or len(parallel.usable_cores()) < 2  # one core: one run at a time, to the terminal
            assert not any("absl::InitializeLog" in text or "oneDNN" in text for text in logs)

    @pytest.mark.slow
    def test_given_runs_pair_their_seeds_and_hold_the_search_choice(self, study_runs, tmp_path, capsys):
        out, report = study_runs
        sup = tmp_path / "sup"
        shutil.copytree(out / "sup", sup, ignore=shutil.ignore_patterns("standalone"))
        twice, gmacs = report["second_seed_runs"][0]["arch"], {r["arch"]: r["gmacs"] for r in report["archs"]}
        (sup / "search_best").mkdir()
        g = gmacs[twice]  # median cost g + 1: the arch trained twice is the best within it
        _write_scores(sup / "search_best" / "scores.csv",
                      [(twice, g, 0.5), ("2,2,2,2,2,2,2,2,1", g + 1, 0.9), ("2,2,2,2,2,2,2,2,2", g + 2, 0.1)])
        runs = str(out / "sup" / "standalone" / "standalone_*")
        flags = ["--supernet", str(sup), "--standalone_glob", runs, "--bootstrap", "50", "--out", str(tmp_path / "r")]
        assert rank.main(flags + ["--search_choice"]) == 0
        again = json.loads((tmp_path / "r" / "rank_report.json").read_text())
        # the globbed folder holds both seeds of one arch: the lower seed's run is ranked, the other is its second
        assert [(r["arch"], r["run"]) for r in again["archs"]] == [(r["arch"], r["run"]) for r in report["archs"]]
        assert [r["run"] for r in again["second_seed_runs"]] == [r["run"] for r in report["second_seed_runs"]]
        first = next(r["standalone_epe"] for r in report["archs"] if r["arch"] == twice)
        choice = again["search_choice"]
        assert choice["arch"] == twice and choice["choice_seed_epes"] == pytest.approx(
            [first, report["second_seed_runs"][0]["standalone_epe"]], rel=1e-6)
        assert twice not in [r["arch"] for r in choice["similar"]]
        _write_scores(sup / "search_best" / "scores.csv", [("2,2,2,2,2,2,2,2,1", 1.0, 0.5)])
        capsys.readouterr()
        assert rank.main(flags + ["--search_choice"]) == 1
        err = capsys.readouterr().err
        assert "none of the runs given trains the search's choice 2,2,2,2,2,2,2,2,1" in err and err.count("\n") == 1

    @pytest.mark.slow
    def test_per_batch_epes_match_each_batch_scored_alone(self, study_runs):
        out, report = study_runs
        cfg, _ = ranking.read_run(str(out / "sup"))
        recal, val = batches.scoring_batches(cfg, data_fc2.open_data(cfg))
        arch, (h, w) = supernet.parse_arch(report["archs"][0]["arch"]), (cfg["input_h"], cfg["input_w"])
        with scoring.restored_scorer(str(out / "sup"), "best", h, w, input_size=(h, w)) as (sess, scorer, _):
            once = ranking.score_per_batch(sess, scorer, arch, recal, val)
            alone = [scoring.score_subnet(sess, scorer, arch, recal, [batch])["epe"] for batch in val]
        assert len(once) == len(val) > 1 and once == pytest.approx(alone, rel=1e-6)

    @pytest.mark.slow
    def test_rank_bad_input_is_a_one_line_error(self, study_runs, tmp_path, capsys):
        out, report = study_runs
        alone = [r["run"] for r in report["archs"]]
        other_size, other_source = tmp_path / "other_size", tmp_path / "other_source"
        for copy, name, changes in ((other_size, "config.json", {"input_h": 48}),
                                    (other_source, "train_report.json", {"data_source": "fc2"})):
            subprocess.run(["cp", "-r", alone[0], str(copy)], check=True)
            atomic_files.write_json_atomic(str(copy / name), dict(json.loads((copy / name).read_text()), **changes))
        sup = str(out / "sup")
        cases = [(alone[:2], "at least 3"), (alone[:2] + [sup], "not a standalone run"),
                 (alone[:2] + [str(other_size)], "input_h 48"), (alone[:2] + [str(other_source)], "data source fc2"),
                 (alone[:2] + [alone[0]], "one run per arch")]
        capsys.readouterr()
        for given, named in cases:
            assert rank.main(["--supernet", sup, "--standalone"] + given) == 1
            err = capsys.readouterr().err
            assert err.startswith("error: ") and named in err and err.count("\n") == 1, err
        assert rank.main(["--supernet", alone[0], "--standalone"] + alone) == 1
        assert "not a supernet" in capsys.readouterr().err
        # --train reuses finished runs of its folder: a second-seed run of other data is refused, not reused
        stale = tmp_path / "stale"
        subprocess.run(["cp", "-r", str(out / "sup" / "standalone"), str(stale)], check=True)
        second = next(p for p in stale.iterdir() if p.is_dir() and "_seed" in p.name)
        atomic_files.write_json_atomic(str(second / "config.json"),
                                       dict(json.loads((second / "config.json").read_text()), input_h=48))
        assert rank.main(["--supernet", sup, "--train", "3", "--standalone_dir", str(stale)]) == 1
        err = capsys.readouterr().err
        assert f"{second}: not the supernet's data or input size: input_h 48" in err and err.count("\n") == 1, err
        # an interrupted run of other data is refused before it is resumed
        (second / "train_report.json").unlink()
        assert rank.main(["--supernet", sup, "--train", "3", "--standalone_dir", str(stale)]) == 1
        err = capsys.readouterr().err
        assert f"{second}: not the supernet's data or input size: input_h 48" in err and err.count("\n") == 1, err
        assert not (second / "train_report.json").exists()
        for given, named in (([alone[0], alone[0]], "given twice"), ([sup, alone[0]], f"{sup} is a supernet run"),
                             ([alone[0], str(other_size)], "not the first run's data or input size: input_h 48")):
            assert rank.main(["--margin"] + given) == 1
            err = capsys.readouterr().err
            assert err.startswith("error: ") and named in err and err.count("\n") == 1, err

    @pytest.mark.slow
    def test_margin_of_two_runs_alone_is_their_paired_difference(self, study_runs, tmp_path, capsys):
        _, report = study_runs
        first, second = (r["run"] for r in report["archs"][:2])
        assert rank.main(["--margin", first, second, "--out", str(tmp_path), "--bn_recal_batches", "3"]) == 0
        result = json.loads((tmp_path / f"margin_vs_{os.path.basename(first)}.json").read_text())
        # independently: each subnet predicts the first run's validation frames after BN recalibration on
        # the first run's first 3 training batches (the runs' own config says 1); per-sample EPE in numpy
        # (equal pixels: the margin is a plain mean)
        cfg = config.run_config(first)
        assert cfg["bn_recal_batches"] == 1 and result["bn_recal_batches"] == 3
        out = capsys.readouterr().out
        assert out.startswith(result["devices"]["summary"])  # said first, as by every command
        recal, val = batches.scoring_batches(dict(cfg, bn_recal_batches=3), data_fc2.open_data(cfg))
        per_sample = []
        for run in (first, second):
            arch = supernet.parse_arch(config.run_config(run)["arch"])
            preds = []
            with scoring.restored_scorer(run, "best", 32, 48, static_arch=arch) as (sess, scorer, _):
                scoring.score_subnet(sess, scorer, arch, recal, val, lambda i, batch, pred: preds.append(pred))
            epes = [np.sqrt(((p - b[1]) ** 2).sum(-1)).reshape(len(p), -1).mean(1) for p, b in zip(preds, val)]
            per_sample.append(np.concatenate(epes))
        d = per_sample[1] - per_sample[0]
        assert len(d) == result["validation_samples"] == 4
        assert result["margin"] == pytest.approx(d.mean(), rel=1e-5)
        assert result["paired_se"] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), rel=1e-5)
        assert [r["run"] for r in result["runs"]] == [first, second]
        assert all(r["stopping"]["stopped"] is None for r in result["runs"])  # one evaluation each
        assert f"B - A: {d.mean():+.4f} EPE" in out and "fewer than 3 evaluations" in out


class TestRankCommand:
    def test_compare_two_search_results_on_their_shared_archs(self, tmp_path, capsys):
        a = _write_scores(tmp_path / "a.csv", [("0,0,0,0,0,0,0,0,0", 0.1, 3.0), ("1,1,1,1,1,1,1,1,1", 0.2, 2.0),
                                               ("2,2,2,2,2,2,2,2,2", 0.3, 2.0), ("0,1,2,0,1,2,0,1,2", 0.2, 1.0),
                                               ("2,1,0,2,1,0,2,1,0", 0.2, 9.0)])
        b = _write_scores(tmp_path / "b.csv", [("2,2,2,2,2,2,2,2,2", 0.3, 2.5), ("0,1,2,0,1,2,0,1,2", 0.2, 2.0),
                                               ("1,1,1,1,1,1,1,1,1", 0.2, 1.0), ("0,0,0,0,0,0,0,0,0", 0.1, 3.0)])
        result = ranking.compare_scores(a, b)
        # shared, in a's order 000 111 222 012: a = 3 2 2 1, b = 3 1 2.5 2. Pairs: (000,111) C, (000,222) C,
        # (000,012) C, (111,222) a tied, (111,012) D, (222,012) C: tau-b = (4 - 1) / sqrt(5 * 6)
        assert result["shared_archs"] == 4 and result["only_a"] == 1 and result["only_b"] == 0
        assert result["kendall_tau_b"] == pytest.approx(3 / np.sqrt(30), abs=1e-12)
        assert rank.main(["--compare", a, b]) == 0
        assert f"{3 / np.sqrt(30):.4f}" in capsys.readouterr().out

    def test_compare_bad_input_is_a_one_line_error(self, tmp_path, capsys):
        few = _write_scores(tmp_path / "few.csv", [("0,0,0,0,0,0,0,0,0", 0.1, 3.0), ("1,1,1,1,1,1,1,1,1", 0.2, 2.0)])
        bad_arch = _write_scores(tmp_path / "bad.csv", [("0,0,3,0,0,0,0,0,0", 0.1, 3.0)])
        no_epe = tmp_path / "noepe.csv"
        no_epe.write_text("arch,gmacs\n0,0,0\n")
        for args, named in (([few, few], "share 2 archs"), ([bad_arch, few], "bad.csv: line 2"),
                            ([str(no_epe), few], "noepe.csv"), ([str(tmp_path / "none.csv"), few], "none.csv")):
            assert rank.main(["--compare"] + args) == 1
            err = capsys.readouterr().err
            assert err.startswith("error: ") and named in err and err.count("\n") == 1

    def test_second_seeds_go_to_a_third_spread_over_the_order_and_the_choice(self):
        archs = [(i // 3, i % 3) + (0,) * 7 for i in range(9)]
        cfg = {"seed": 4}
        # a third of 9: positions 0, 4 and 8 of the order, with seed 5
        assert rank_study.second_seed_plan(None, cfg, archs, None) == [(archs[i], 5) for i in (0, 4, 8)]
        outside, drawn, picked = (2,) * 9, archs[1], archs[4]
        extra = {a: rank_study.second_seed_plan(None, cfg, archs, {"arch": supernet.format_arch(a)})[3:]
                 for a in (outside, drawn, picked)}
        # a choice the study did not draw is trained with both seeds; one it drew, with the second only
        assert extra == {outside: [(outside, None), (outside, 5)], drawn: [(drawn, 5)], picked: []}
        assert rank_study.second_seed_plan(0, cfg, archs, None) == []

    def test_scoring_progress_counts_the_subnets_and_the_time_left(self, capsys):
        on_scored = ranking.scoring_progress(3)
        for run in ("sup", "standalone_000000000", "standalone_222222222"):
            on_scored(f"out/{run}", (0,) * 9 if "0000" in run else (2,) * 9)
        lines = capsys.readouterr().out.splitlines()
        assert [line.split(",")[0].split(": ")[0] for line in lines] == ["scored 1/3", "scored 2/3", "scored 3/3"]
        assert "0,0,0,0,0,0,0,0,0 in standalone_000000000" in lines[1] and "in sup," in lines[0]
        assert all(" s each, time left " in line for line in lines) and lines[2].endswith("time left 0.0 min")

    def test_rank_scoring_flags_out_of_range_are_refused_by_name(self, capsys):
        for flag in ("--bn_recal_batches", "--jobs", "--bootstrap"):
            with pytest.raises(SystemExit) as exit_info:
                rank.parse_args(["--supernet", "sup", "--train", "12", flag, "0"])
            err = capsys.readouterr().err
            assert exit_info.value.code == 2 and flag in err and "must be >= 1" in err, err
        with pytest.raises(SystemExit) as exit_info:
            rank.parse_args(["--supernet", "sup", "--train", "12", "--seed", "-1"])
        assert exit_info.value.code == 2 and "--seed -1 must be >= 0" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exit_info:
            rank.parse_args(["--supernet", "sup", "--train", "0"])
        assert exit_info.value.code == 2 and "--train needs at least 3 archs" in capsys.readouterr().err


class TestRankBounds:
    @staticmethod
    def _supernet_run(tmp_path):
        """A finished supernet run as rank reads it: config (synthetic data, 8 training pairs in 4 batches
        of 2) and train report; no checkpoint is needed to be refused."""
        run = tmp_path / "sup"
        run.mkdir()
        cfg = tiny_config(synthetic=True, synthetic_train_size=8, synthetic_val_size=4, experiment_name="sup",
                          output_dir=str(tmp_path))
        (run / "config.json").write_text(json.dumps(cfg))
        (run / "train_report.json").write_text(json.dumps({"mode": "supernet", "data_source": "synthetic",
                                                           "global_step": 1}))
        return str(run)

    def test_train_above_the_space_is_refused_before_any_folder(self, tmp_path, capsys):
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as exit_info:
            rank.main(["--supernet", str(tmp_path / "sup"), "--train", "99999", "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err == ("error: --train 99999 is more than the search space's "
                                                      "19683 archs\n")
        assert supernet.SPACE.num_archs == 3 ** 9 and not out.exists()

    def test_refine_flags_are_refused_before_any_scoring(self, tmp_path, capsys):
        sup = self._supernet_run(tmp_path)
        for flags, words in ((["--supernet", sup, "--standalone", sup, "--refine_steps", "100"],
                              "--refine_steps goes with --bench and --supernet or --kept_scores"),
                             (["--bench", str(BENCH), "--supernet", sup, "--kept_scores", "k.json"],
                              "--kept_scores goes with --bench, instead of --supernet"),
                             (["--bench", str(BENCH), "--bn_recal_batches", "2"],
                              "--bench scores by its plan's protocol"),
                             (["--bench", str(BENCH), "--plan_archs"],
                              "--plan_archs goes with --bench and --supernet"),
                             (["--bench", str(BENCH), "--supernet", sup, "--refine_lr_scale", "0.1"],
                              "--refine_lr_scale goes with --refine_steps"),
                             (["--bench", str(BENCH), "--supernet", sup, "--refine_steps", "100", "--checkpoint_type",
                               "last"], "--refine_steps starts every child from the supernet's best checkpoint")):
            with pytest.raises(SystemExit) as exit_info:
                rank.main(flags)
            assert exit_info.value.code == 2 and words in capsys.readouterr().err
        # a supernet on the bench's data (no checkpoint: reaching the scoring would fail otherwise)
        (tmp_path / "sup" / "config.json").write_text(json.dumps(rank_bench.setting_config(str(BENCH))))
        out = tmp_path / "out"
        assert rank.main(["--bench", str(BENCH), "--supernet", sup, "--refine_steps", "100", "6", "--out",
                          str(out)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--refine_steps (6) must be a multiple of" in err and not out.exists()
        assert rank.main(["--bench", str(BENCH), "--supernet", sup, "--refine_steps", "100", "--refine_lr_scale",
                          "0.1", "nan", "--out", str(out)]) == 1
        assert capsys.readouterr().err == "error: --refine_lr_scale must be > 0, got nan\n" and not out.exists()
        twice = rank.parse_args(["--bench", str(BENCH), "--supernet", sup, "--refine_steps", "100", "400", "100",
                                 "--refine_lr_scale", "1", "0.5", "1.0"])
        assert [(s["steps"], s["lr_scale"]) for s in rank.refine_settings_of(twice)] == [
            (100, 1.0), (100, 0.5), (400, 1.0), (400, 0.5)]  # each setting once, in the order asked

    def test_recal_batches_beyond_the_data_are_refused_before_work_and_folders(self, tmp_path, capsys):
        sup, out = self._supernet_run(tmp_path), tmp_path / "out"
        standalone = tmp_path / "alone"
        assert rank.main(["--supernet", sup, "--standalone", str(standalone), "--bn_recal_batches", "5",
                          "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err == "error: --bn_recal_batches 5: the run's data has 4 training batches of 2\n"
        assert not out.exists() and not (tmp_path / "sup" / "standalone").exists()

    def test_a_refusal_after_the_checks_leaves_no_empty_out_folder(self, tmp_path, capsys):
        sup, out = self._supernet_run(tmp_path), tmp_path / "out" / "deeper"
        assert rank.main(["--supernet", sup, "--standalone", str(tmp_path / "no_such_run"), "--out", str(out)]) == 1
        assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "out").exists()
        (tmp_path / "file").write_text("")
        assert rank.main(["--supernet", sup, "--standalone", str(tmp_path / "no_such_run"),
                          "--out", str(tmp_path / "file" / "out")]) == 1
        assert "cannot be a folder" in capsys.readouterr().err


# ==== 36. ranking.py: rank statistics, the noise floor, standalone runs' checks and scores ===========================


class TestRankingStatistics:
    def test_statistics_match_a_hand_computation_with_ties(self):
        # x ties samples 1 and 2, y ties samples 2 and 3. Pairs: 7 concordant, 1 discordant,
        # 1 tied in x only, 1 tied in y only: tau-b = (7 - 1) / sqrt((10 - 1) (10 - 1)) = 2/3.
        # Average ranks x 1, 2.5, 2.5, 4, 5 and y 2, 1, 3.5, 3.5, 5: rho = 7.25 / 9.5.
        x, y = [1.0, 2.0, 2.0, 3.0, 5.0], [2.0, 1.0, 3.0, 3.0, 4.0]
        tau, rho = ranking.rank_correlations(x, y)
        assert tau == pytest.approx(2 / 3, abs=1e-12) and rho == pytest.approx(7.25 / 9.5, abs=1e-12)
        assert list(ranking.ranks(x)) == [1, 2.5, 2.5, 4, 5]
        assert ranking.top_k_overlap(x, y) == {1: 0.0, 3: 1.0}

    def test_bootstrap_is_seeded_and_contains_the_estimate(self):
        rng = np.random.default_rng(3)
        x = rng.normal(size=12)
        y = x + rng.normal(scale=0.7, size=12)
        tau, rho = ranking.rank_correlations(x, y)
        first, again = ranking.bootstrap_intervals(x, y, 300, seed=5), ranking.bootstrap_intervals(x, y, 300, seed=5)
        assert first == again and first != ranking.bootstrap_intervals(x, y, 300, seed=6)
        assert first["tau_ci95"][0] <= tau <= first["tau_ci95"][1]
        assert first["rho_ci95"][0] <= rho <= first["rho_ci95"][1]
        assert first["tau_ci95"][1] - first["tau_ci95"][0] > 0.05  # 12 noisy archs: not a point

    def test_noise_floor_figures_against_numpy(self):
        per_batch = [[1.0, 1.2, 0.8, 1.0], [2.0, 2.1, 1.9, 2.0], [1.05, 1.1, 0.9, 1.3]]
        sizes = [2, 2, 2, 1]
        assert ranking.batch_weighted_epe(per_batch[0], sizes) == pytest.approx((2 + 2.4 + 1.6 + 1.0) / 7)
        # halves: batches 0-1 give 1.1, 2.05, 1.075 (order 2 < 0 < 1), batches 2-3 give 0.867, 1.933,
        # 1.033 (order 0 < 2 < 1): pairs (0,1) and (1,2) agree, (0,2) does not, tau = (2 - 1) / 3
        assert ranking.half_split_tau(per_batch, sizes) == pytest.approx(1 / 3)
        # pairs (0,1) and (1,2) differ by about 1 px with a standard error below 0.1; pair (0,2) by
        # -0.057 (differences -0.05 0.1 -0.1 -0.3) with a standard error of 0.083: not resolved
        assert ranking.resolvable_pairs(per_batch, sizes) == pytest.approx(2 / 3)

    def test_chosen_archs_spread_over_depth_and_kernels_separately(self):
        archs = ranking.choose_archs(12, 0)
        assert archs == ranking.choose_archs(12, 0) and len(set(archs)) == 12
        assert (0,) * 9 in archs and (2,) * 9 in archs  # the corners
        depth = [np.mean(a[:4]) / 2 for a in archs]  # EB0..DB1 choose ResBlocks, the other five kernels
        kernel = [np.mean(a[4:]) / 2 for a in archs]
        assert np.allclose(ranking.choice_scores(archs), np.stack([depth, kernel], 1))
        for scores, levels in ((depth, 4), (kernel, 3)):  # each spans its range at its grid's levels
            assert min(scores) == 0 and max(scores) == 1 and len(set(scores)) == levels
        # the two are not tied to each other (as they would be along GMACs alone)
        assert abs(np.corrcoef(depth, kernel)[0, 1]) < 0.3

    def test_seed_ceiling_and_the_supernet_against_each_seed_by_hand(self):
        # first seed's order a b c d; second seed's b a c d (one pair of six swapped: tau 2/3); the
        # supernet's b a d c: against the first 2/3 of pairs agree (tau 1/3), the second 5/6 (2/3);
        # the seeds' mean 1.25 1.6 3.25 3.9 orders a b c d: tau 1/3, rho 1 - 6 * 4 / (4 * 15) = 0.6
        codes = [(0,) * 9, (1,) * 9, (2,) * 9, (0,) * 8 + (1,)]
        rows = [{"arch": supernet.format_arch(a), "standalone_epe": first, "supernet_epe": by_supernet}
                for a, first, by_supernet in zip(codes, (1.0, 2.0, 3.0, 4.0), (2.0, 1.0, 4.0, 3.0))]
        second = [(f"run{i}", a, [e, e]) for i, (a, e) in enumerate(zip(codes, (1.5, 1.2, 3.5, 3.8)))]
        ceiling = ranking.seed_ceiling(rows, second, [2, 2], 50, 0)
        assert ceiling["second_seed_epe"] == pytest.approx([1.5, 1.2, 3.5, 3.8])
        assert ceiling["kendall_tau_b"] == pytest.approx(2 / 3)
        assert ceiling["supernet_tau_b_vs_seed"] == pytest.approx([1 / 3, 2 / 3])
        mean = ceiling["supernet_vs_seed_mean"]
        assert mean["kendall_tau_b"] == pytest.approx(1 / 3) and mean["spearman_rho"] == pytest.approx(0.6)
        assert ranking.seed_ceiling(rows, second[:2], [2, 2], 50, 0) is None  # fewer than 3 archs twice
        lines = ranking.study_lines({"seed_ceiling": ceiling})
        assert "0.333 against the first seed, 0.667 against the second, 0.333 (" in lines[1]


class TestRankingSearchChoice:
    def test_search_choice_is_the_best_subnet_within_the_median_cost(self, tmp_path):
        (tmp_path / "search_best").mkdir()
        _write_scores(tmp_path / "search_best" / "scores.csv",
                      [("0,0,0,0,0,0,0,0,0", 0.1, 3.0), ("1,0,0,0,0,0,0,0,0", 0.2, 2.5),
                       ("2,0,0,0,0,0,0,0,0", 0.3, 2.6), ("2,2,0,0,0,0,0,0,0", 0.4, 1.0),
                       ("2,2,2,2,2,2,2,2,2", 0.5, 0.5)])
        # median cost 0.3; within it the lowest EPE is 2.5 at 0.2
        assert ranking.search_choice(str(tmp_path), "best") == {
            "arch": "1,0,0,0,0,0,0,0,0", "gmacs": 0.2, "supernet_epe": 2.5, "budget_gmacs": 0.3}
        with pytest.raises(errors.RankError, match="search_last/scores.csv"):
            ranking.search_choice(str(tmp_path), "last")
        path = tmp_path / "search_best" / "scores.csv"
        header = path.read_text().splitlines()[0]
        for rows in ([], [("0,0,0,0,0,0,0,0,0", 0.1, float("nan"))], [("0,0,0,0,0,0,0,0,0", float("inf"), 1.0)]):
            _write_scores(path, rows)
            with pytest.raises(errors.RankError, match=re.escape(str(path))):
                ranking.search_choice(str(tmp_path), "best")
        path.write_text(header + '\n"0,0,0,0,0,0,0,0,0"\n')  # a short row
        with pytest.raises(errors.RankError, match=re.escape(str(path))):
            ranking.search_choice(str(tmp_path), "best")

    def test_the_study_says_its_time_by_part(self, tmp_path):
        search_dir = tmp_path / "search_best"
        search_dir.mkdir()
        assert ranking.search_seconds(str(tmp_path), "best") is None  # no search yet
        (search_dir / "pareto.json").write_text(json.dumps({"provenance": {"unit_seconds": 3000}}))
        assert ranking.search_seconds(str(tmp_path), "best") == 3000.0
        parts = {"supernet": 2100.0, "search": None, "standalone runs": 11400.0, "ranking": 90.0}
        assert ranking.time_taken_line(parts) == (
            "time taken: supernet 35.0 min, search n/a, standalone runs 190.0 min, ranking 1.5 min "
            "(standalone runs added up: with --jobs above 1, more than elapsed)")

    def test_search_choice_against_a_random_pick_of_its_cost_by_hand(self):
        choice = {"arch": "1,1,1,1,1,1,1,1,1", "gmacs": 0.5, "supernet_epe": 2.0, "budget_gmacs": 0.5}
        def row(arch, gmacs, batches):
            return {"arch": arch, "run": "runs/" + arch, "gmacs": gmacs, "standalone_batches": batches,
                    "standalone_epe": ranking.batch_weighted_epe(batches, sizes)}
        sizes = [8, 8, 4]
        rows = [row("0,0,0,0,0,0,0,0,0", 0.2, [9.0, 9.0, 9.0]), row("1,0,0,0,0,0,0,0,0", 0.45, [1.5, 2.5, 3.0]),
                row("1,2,0,0,0,0,0,0,0", 0.55, [1.5, 2.7, 3.4]), row("2,2,2,2,2,2,2,2,2", 0.7, [0.1, 0.1, 0.1])]
        arch = supernet.parse_arch(choice["arch"])
        second = [("a", arch, [1.0, 2.0, 3.0]), ("b", arch, [1.2, 2.2, 3.2]), ("c", (2,) * 9, [5.0, 5.0, 5.0])]
        result = ranking.search_versus_random(choice, rows, second, sizes)
        # similar cost (0.4 .. 0.6): the 0.45 and 0.55 subnets; per batch the choice's seeds average
        # 1.1 2.1 3.1, the random pick 1.5 2.6 3.2: differences -0.4 -0.5 -0.1, weighted by 8 8 4: -0.38;
        # their standard error: sd 0.20817 / sqrt 3
        assert [r["arch"] for r in result["similar"]] == ["1,0,0,0,0,0,0,0,0", "1,2,0,0,0,0,0,0,0"]
        assert result["choice_seed_epes"] == pytest.approx([1.8, 2.0])
        assert result["random_pick_epe"] == pytest.approx((1.5 * 8 + 2.6 * 8 + 3.2 * 4) / 20)
        assert result["difference"] == pytest.approx(-0.38)
        assert result["difference_se"] == pytest.approx(0.2081666 / np.sqrt(3), rel=1e-6)
        assert ranking.study_lines({"search_choice": result}) == [
            "search's choice at <= 0.500 GMAC: 1,1,1,1,1,1,1,1,1 (0.500), alone EPE 1.9000 (seeds 1.8000, 2.0000); "
            "a random pick of that cost (2 subnets) 2.2800; difference -0.3800 (paired SE 0.1202)"]
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots()
        again_run = {"arch": "1,0,0,0,0,0,0,0,0", "run": "x", "standalone_epe": 2.5}
        rank_plot.plot_cost_panel(ax, {"archs": rows[:4], "search_choice": result, "second_seed_runs": [again_run]})
        star = next(line for line in ax.lines if line.get_marker() == "*")  # the choice's two seeds
        assert list(star.get_xdata()) == [0.5, 0.5] and list(star.get_ydata()) == pytest.approx([1.8, 2.0])
        circle = next(line for line in ax.lines if line.get_marker() == "o")  # a second seed, over its first
        assert list(circle.get_xdata()) == [0.45] and list(circle.get_ydata()) == [2.5]
        window = ax.patches[0].get_patch_transform().transform(ax.patches[0].get_path().vertices)[:, 0]
        assert (window.min(), window.max()) == pytest.approx((0.45, 0.55))  # the cost window, in data units
        plt.close(fig)
        # the study drew the choice too: its row is the first seed, and not among the random picks
        rows.append(row(choice["arch"], 0.5, [1.0, 2.0, 3.0]))
        again = ranking.search_versus_random(choice, rows, second[1:], sizes)
        assert again["choice_seed_epes"] == pytest.approx([1.8, 2.0]) and again["difference"] == pytest.approx(-0.38)
        # a similar subnet with a second seed counts with its two seeds' mean: 1,0,... averages 2.0 2.5 4.0
        # per batch, the random pick 1.75 2.6 3.7; differences -0.65 -0.5 -0.6, weighted by 8 8 4: -0.58
        similar_again = ("d", supernet.parse_arch("1,0,0,0,0,0,0,0,0"), [2.5, 2.5, 5.0])
        both = ranking.search_versus_random(choice, rows, second[1:] + [similar_again], sizes)
        assert both["similar"][0]["seed_epes"] == pytest.approx([2.2, 3.0])
        assert both["similar"][1]["seed_epes"] == pytest.approx([2.36])
        assert both["random_pick_epe"] == pytest.approx((1.75 * 8 + 2.6 * 8 + 3.7 * 4) / 20)
        assert both["difference"] == pytest.approx(-0.58)
        assert both["difference_se"] == pytest.approx(np.std([-0.65, -0.5, -0.6], ddof=1) / np.sqrt(3))
        # fewer than two within 20%: the three nearest in cost
        lone = ranking.search_versus_random(dict(choice, gmacs=0.3), rows[:4], second, sizes)
        assert [r["gmacs"] for r in lone["similar"]] == [0.2, 0.45, 0.55]

    def test_a_run_report_and_pool_are_checked_field_by_field(self, tmp_path):
        (tmp_path / "config.json").write_text(json.dumps(config.defaults()))
        report = {"mode": "supernet", "data_source": "synthetic", "global_step": 4, "wall_time_s": 12.5}
        (tmp_path / "train_report.json").write_text(json.dumps(report))
        assert ranking.read_run(str(tmp_path))[1] == report
        for wall in ("12", None, True):
            (tmp_path / "train_report.json").write_text(json.dumps(dict(report, wall_time_s=wall)))
            with pytest.raises(errors.RankError, match="train_report.json: field 'wall_time_s' must be a number"):
                ranking.read_run(str(tmp_path))
        (tmp_path / "pool.json").write_text(json.dumps({"archs": []}))
        with pytest.raises(errors.CheckpointError, match="pool.json: field 'archs' must be a non-empty list"):
            runs.read_pool(str(tmp_path / "pool.json"))

    def test_a_standalone_history_without_finite_epes_is_refused(self, tmp_path):
        arch = (0,) * 9
        path = tmp_path / "eval_history.csv"
        path.write_text("epoch,epe_000000000\n1,3.5\n2,2.5\n")
        assert ranking.read_history(str(tmp_path), arch) == {1: 3.5, 2: 2.5}
        for text in ("epoch,epe_000000000\n", "", "epoch,epe_000000000\n1,3.5\n2\n", "epoch,epe_000000000\n1,-inf\n",
                     "epoch,epe_000000000\n1,nan\n", "epoch,epe_000000000\n1,x\n", "epoch,epe_111111111\n1,3\n"):
            path.write_text(text)
            with pytest.raises(errors.RankError, match=re.escape(str(path))):
                ranking.read_history(str(tmp_path), arch)
        path.write_bytes(b"epoch,epe_000000000\n1,\xff\n")
        with pytest.raises(errors.RankError, match=re.escape(str(path))):
            ranking.read_history(str(tmp_path), arch)


# ==== 37. stopping.py: the stopping criterion of runs trained alone ==================================================


class TestStopping:
    def test_stopping_figures_against_a_hand_computation(self):
        # best EPE 3.0, 2.0, 2.0, 1.95 against a zero flow of 4: improved 0.05 over the last two
        # evaluations and at the last, 1.25% each: below 2% but not below 0.5%
        figures = stopping.figures({2: 3.0, 4: 2.0, 6: 2.5, 8: 1.95}, 4.0)
        assert figures["last_two_pct"] == pytest.approx(1.25) and figures["last_pct"] == pytest.approx(1.25)
        assert figures["stopped"] is False and figures["evaluations"] == 4
        # best 2.1, 2.05, 2.04: 1.5% and 0.25%: stopped
        figures = stopping.figures({1: 3.0, 2: 2.1, 3: 2.05, 4: 2.04}, 4.0)
        assert figures["last_two_pct"] == pytest.approx(1.5) and figures["last_pct"] == pytest.approx(0.25)
        assert figures["stopped"] is True
        assert stopping.figures({1: 3.0, 2: 2.0}, 4.0)["stopped"] is None

    def test_stopping_summary_names_the_runs_still_falling(self):
        # zero flow 4: run a's best 2.1 2.05 2.04 stopped (1.5% / 0.25%); b's 3.0 2.0 1.95 falling
        # (1.25% / 1.25%); c has two evaluations
        summary = stopping.summary({"x/a": {1: 3.0, 2: 2.1, 3: 2.05, 4: 2.04},
                                            "x/b": {2: 3.0, 4: 2.0, 6: 2.5, 8: 1.95}, "x/c": {1: 3.0, 2: 2.0}}, 4.0)
        assert summary["stopped"] == ["x/a"] and summary["still_falling"] == ["x/b"]
        assert summary["runs"]["x/c"]["evaluations"] == 2
        assert stopping.lines(summary) == [
            "stopping criterion (best EPE improved < 2% / 0.5% of zero flow over the last two evaluations / the "
            "last): 1 of 3 standalone runs stopped; still falling: b (1.25% / 1.25%); 1 with fewer than 3 evaluations"]

    def test_tau_range_if_the_runs_still_falling_improve_against_every_order(self):
        # brute force: every order of 7 standalone runs in which the runs that do not fall keep their order
        # and each falling run has no more of them ahead of it than it had; tau-b of each against the supernet
        rng = np.random.default_rng(3)
        for falling in ([6], [2, 5], [0, 3, 6], [0]):
            sup, alone = rng.permutation(7) + 1.0, np.arange(7) + 1.0
            rows = [{"arch": f"a{i}", "run": f"r{i}", "supernet_epe": sup[i], "standalone_epe": alone[i]}
                    for i in range(7)]
            steady = [i for i in range(7) if i not in falling]
            taus = []
            for order in itertools.permutations(range(7)):  # order[k]: the run at place k
                ahead = {i: sum(j in steady for j in order[:order.index(i)]) for i in falling}
                if [i for i in order if i in steady] == steady and all(ahead[i] <= i - sum(
                        f < i for f in falling) for i in falling):
                    position = np.argsort(order)  # no ties: tau-b is (concordant - discordant) / pairs
                    signs = [np.sign(sup[a] - sup[b]) * np.sign(position[a] - position[b])
                             for a, b in itertools.combinations(range(7), 2)]
                    taus.append(sum(signs) / len(signs))
            bound = stopping.tau_range_if_improved(rows, {f"r{i}" for i in falling} | {"a second seed's run"})
            assert bound["archs"] == [f"a{i}" for i in falling]
            assert bound["kendall_tau_b"] == pytest.approx([min(taus), max(taus)], abs=1e-12), falling
        assert stopping.tau_range_if_improved(rows, {"r9"}) is None
        big = [dict(r, run=f"r{i}") for i, r in enumerate(rows * 4)]  # 28 runs, 3 falling: 29^3 x 3! orders
        assert stopping.tau_range_if_improved(big, {"r0", "r1", "r2"}) is None
        result = dict(stopping.summary({}, 4.0), tau_if_improved={"archs": ["a2", "a5"], "kendall_tau_b": [0.1, 0.35]})
        assert stopping.lines(result)[1] == ("had a2, a5 (still falling) ended anywhere better: "
                                             "Kendall tau-b 0.100 .. 0.350")


# ==== 38. parallel.py: child processes a few at a time, each pinned to its cores =====================================


_CHILD = """import json, os, sys, time
start = time.time()
time.sleep(0.4)
if sys.argv[2] == "fail":
    print("error: a stand-in failure")
    sys.exit(3)
with open(sys.argv[1], "w") as f:
    json.dump({"start": start, "end": time.time(), "cores": sorted(os.sched_getaffinity(0))}, f)
"""


class TestParallel:
    def test_cores_are_dealt_out_to_slots_in_turn(self):
        assert parallel.slot_cores(2, [0, 1, 2]) == [[0, 2], [1]]
        assert parallel.slot_cores(1, [4, 5]) == [[4, 5]]
        for jobs in (0, 3):
            with pytest.raises(errors.RankError, match=f"--jobs {jobs}: must be within 1..2"):
                parallel.slot_cores(jobs, [0, 1])

    def test_time_left_is_the_mean_time_of_the_rest_less_what_runs_shared_over_slots(self):
        # 2 of 5 done in 60 and 120 s (mean 90): 3 left, 270 s of work less the 30 s one has run, over 2 slots
        line = parallel.progress_line("b", [(60.0, 1), (120.0, 1)], [(30.0, 1)], [1, 1], 2)
        assert line == "[2/5] b finished in 2m00s; 1 running, 2 waiting, about 2m00s left"
        assert parallel.progress_line("e", [(60.0, 1)] * 5, [], [], 2) == "[5/5] e finished in 1m00s; 0 running, " \
                                                                           "0 waiting"
        # weighed: a resumed child did 0.25 of a run in 60 s (240 s a run); 2 runs of 1 and one of 0.5 left,
        # less the 100 s the running one has done, over 2 slots: (2.5 * 240 - 100) / 2 = 250 s
        line = parallel.progress_line("r", [(60.0, 0.25)], [(100.0, 1.0)], [1.0, 0.5], 2)
        assert line.endswith("about 4m10s left")

    @pytest.mark.skipif(len(parallel.usable_cores()) < 2, reason="needs two cores")
    def test_children_run_two_at_a_time_each_on_its_own_cores(self, tmp_path):
        lines, slots = [], parallel.slot_cores(2)
        children = [(f"c{i}", [sys.executable, "-c", _CHILD, str(tmp_path / f"c{i}.json"), "ok"],
                     str(tmp_path / f"c{i}.out")) for i in range(5)]
        parallel.run_all(children, 2, log=lines.append)
        runs = [json.loads((tmp_path / f"c{i}.json").read_text()) for i in range(5)]
        assert all(r["cores"] in slots for r in runs)
        for t in sorted(r["start"] for r in runs):  # at most two at once, and those two on other cores
            live = [r for r in runs if r["start"] <= t < r["end"]]
            assert len(live) <= 2 and len({tuple(r["cores"]) for r in live}) == len(live)
        assert sum(line.startswith("started ") for line in lines) == 5 and lines[-1].startswith("[5/5] ")

    def test_with_gpus_each_child_sees_its_slots_gpu_alone(self, tmp_path):
        script = "import json, os, sys; json.dump(os.environ['CUDA_VISIBLE_DEVICES'], open(sys.argv[1], 'w'))"
        lines = []
        children = [(f"g{i}", [sys.executable, "-c", script, str(tmp_path / f"g{i}.json")], None) for i in range(4)]
        parallel.run_all(children, 2, log=lines.append, gpus=2)
        seen = [json.loads((tmp_path / f"g{i}.json").read_text()) for i in range(4)]
        assert seen[:2] == ["0", "1"] and set(seen) == {"0", "1"}  # one child per GPU at a time
        assert [line.split(":")[0] for line in lines if line.startswith("started")][:2] == [
            "started g0 on GPU 0", "started g1 on GPU 1"]
        with pytest.raises(errors.RankError, match=r"--jobs 3: must be within 1..2 \(one run per GPU\)"):
            parallel.run_all(children, 3, log=lines.append, gpus=2)
        with pytest.raises(errors.RankError, match="more runs than this machine's 2 GPUs"):
            rank.check_jobs(3, {"gpus": [{}, {}]})
        rank.check_jobs(2, {"gpus": [{}, {}]})

    def test_children_quieten_tensorflow_themselves_unless_the_user_set_its_log_level(self, tmp_path, monkeypatch):
        script = "import json, os, sys; json.dump(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), open(sys.argv[1], 'w'))"
        for user_level, seen in ((None, None), ("1", "1")):
            monkeypatch.setattr(tensorflow_quiet, "USER_LOG_LEVEL", user_level)
            monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", user_level or tensorflow_quiet.QUIET_LOG_LEVEL)
            path = tmp_path / f"level_{user_level}.json"
            parallel.run_all([("c", [sys.executable, "-c", script, str(path)], None)], 1, log=lambda line: None,
                             env=tensorflow_quiet.child_environment())
            assert json.loads(path.read_text()) == seen

    def test_a_failure_starts_no_new_child_and_names_the_failed_one(self, tmp_path):
        lines = []
        children = [(name, [sys.executable, "-c", _CHILD, str(tmp_path / f"{name}.json"), kind],
                     str(tmp_path / f"{name}.out")) for name, kind in (("first", "ok"), ("broken", "fail"),
                                                                        ("third", "ok"))]
        with pytest.raises(errors.RankError) as err:
            parallel.run_all(children, 1, log=lines.append)
        out = str(tmp_path / "broken.out")
        assert str(err.value) == f"broken failed (exit 3): error: a stand-in failure (see {out})"
        assert (tmp_path / "first.json").exists() and not (tmp_path / "third.json").exists()
        assert not (tmp_path / "third.out").exists()


    def test_an_interrupt_stops_and_reaps_the_running_children(self, tmp_path):
        script = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
        log = tmp_path / "sleeper.out"

        def interrupt_at_heartbeat(line):
            if line.startswith("  sleeper: ") and line.split(": ")[1]:  # the heartbeat repeats the child's pid
                raise KeyboardInterrupt

        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            parallel.run_all([("sleeper", [sys.executable, "-c", script], str(log))], 1,
                             log=interrupt_at_heartbeat, heartbeat=0.5)
        assert time.monotonic() - start < 30
        with pytest.raises(ProcessLookupError):  # terminated and reaped, not left running
            os.kill(int(log.read_text().split()[0]), 0)

    def test_a_killed_parent_stops_and_reaps_its_running_children_too(self, tmp_path):
        log = tmp_path / "sleeper.out"
        parent = subprocess.Popen([sys.executable, "-c", (
            f"import sys; sys.path.insert(0, {str(HERE)!r}); import parallel; parallel.run_all([('sleeper', "
            f"[sys.executable, '-c', 'import os, time; print(os.getpid(), flush=True); time.sleep(60)'], "
            f"{str(log)!r})], 1, log=lambda line: None)")])
        deadline = time.monotonic() + 30
        while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        parent.terminate()  # SIGTERM, what kill sends
        assert parent.wait(timeout=30) == 128 + signal.SIGTERM
        with pytest.raises(ProcessLookupError):  # the child stopped with it, not left training unseen
            os.kill(int(log.read_text().split()[0]), 0)


# ==== 39. rank_bench.py: the ranking benchmark rankbench/ ============================================================


BENCH = HERE / "rankbench"


def _hand_row(name, arch, seed, pair_epe, gmacs, stopped=True):
    """A bench row written by hand: its EPE is the mean of its per-pair errors."""
    return {"name": name, "arch": arch, "seed": seed, "gmacs": gmacs, "epe": float(np.mean(pair_epe)),
            "pair_epe": list(pair_epe), "stopping": {"stopped": stopped}, "steps": 1, "wall_time_s": 1.0,
            "commit": "x", "command": "x"}


def _hand_bench():
    """(archs, rows, supernet EPEs, plan) of a bench written by hand: six archs in three cost bands
    (0.30-0.32, 0.50-0.52, 0.70), 40 pairs each, three of them with a second seed."""
    rng = np.random.default_rng(3)
    gmacs = [0.30, 0.31, 0.32, 0.50, 0.52, 0.70]
    truth = [1.10, 1.00, 1.20, 0.90, 0.95, 0.80]
    archs = [supernet.format_arch(supernet.index_to_arch(i)) for i in (5, 77, 300, 4000, 9000, 19000)]
    rows = {}
    for i, (a, g, t) in enumerate(zip(archs, gmacs, truth)):
        rows[f"r{i}"] = _hand_row(f"r{i}", a, 42, t + rng.normal(0, 0.05, 40), g)
    for i in (0, 2, 4):
        rows[f"s{i}"] = _hand_row(f"s{i}", archs[i], 43, truth[i] + 0.01 * (i - 2) + rng.normal(0, 0.05, 40),
                                  gmacs[i])
    return archs, rows, dict(zip(archs, [1.5, 1.6, 1.4, 1.3, 1.2, 1.1])), {"rule": {"training_seeds": [42, 43]}}


def _kendall_by_pairs(x, y):
    """Kendall tau-b counted pair by pair: (concordant - discordant) over the root of the pairs untied
    in x times the pairs untied in y."""
    pairs = list(itertools.combinations(range(len(x)), 2))
    signs = [np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs]
    untied = [sum(v[i] != v[j] for i, j in pairs) for v in (x, y)]
    return sum(signs) / np.sqrt(untied[0] * untied[1])


def _tiny_bench(folder, archs, seconds, fingerprint=True, setting=None):
    """A bench folder at the suite's size: setting (by default its own tiny one), plan with rows for
    `archs` (seed 42) and `seconds` (seed 43), and (with `fingerprint`) the fingerprint of its first 2 steps."""
    folder.mkdir()
    setting = setting or {"synthetic": True, "synthetic_train_size": 8, "synthetic_val_size": 4, "synthetic_seed": 1,
                          "input_h": 32, "input_w": 48, "batch_size": 2, "num_epochs": 3, "steps_per_epoch": 2,
                          "eval_every": 1, "bn_recal_batches": 1, "log_every": 1, "eval_pool_size": 3}
    (folder / "setting.json").write_text(json.dumps(setting))
    rows = [{"name": rank_bench.row_name(supernet.parse_arch(a), s), "arch": a, "seed": s,
             "gmacs": supernet.count_macs(supernet.parse_arch(a), 32, 48) / 1e9}
            for a, s in [(a, 42) for a in archs] + [(a, 43) for a in seconds]]
    plan = {"setting": {"file": "setting.json", "sha256": rank_bench.setting_digest(str(folder))},
            "space_version": supernet.SPACE.version, "rows": rows, "rule": {"training_seeds": [42, 43]},
            "scoring": {"checkpoint": "best", "graph": "static", "bn_recal_batches": 2, "val_pairs": 4}}
    if fingerprint:
        losses = rank_bench.pinned_fingerprint(str(folder), archs[0], 42, 2)
        plan["fingerprint"] = {"arch": archs[0], "seed": 42, "losses": losses}
    (folder / "plan.json").write_text(json.dumps(plan))
    return plan


class TestRankBench:
    def test_a_reproduction_on_one_pair_says_it_has_no_paired_se(self, capsys):
        rows = [{"pair_epe": [1.25]}, {"pair_epe": [1.5]}]
        result = {"row": "000000000_s42", "again_epe": 1.25, "recorded_epe": 1.5, "difference": -0.25,
                  "paired_se": rank_bench.paired_se(*rows), "max_pair_difference": 0.25, "seed_differences": {}}
        rank.print_reproduction(result)
        out = capsys.readouterr().out.splitlines()
        assert out[0] == ("row 000000000_s42 trained again: EPE 1.250000, recorded 1.500000: difference -0.250000 "
                          "(paired SE none: fewer than 2 pairs), largest per-pair difference 0.250000")
        assert out[1].endswith("none yet")

    def test_the_plan_is_what_its_stated_rule_gives(self):
        plan = rank_bench.read_plan(str(BENCH))
        setting = json.loads((BENCH / "setting.json").read_text())
        assert rank_bench.make_plan(setting, plan["rule"]) == plan["rows"]
        first = {r["arch"] for r in plan["rows"] if r["seed"] == 42}
        seconds = {r["arch"] for r in plan["rows"] if r["seed"] == 43}
        study = {supernet.format_arch(a) for a in ranking.choose_archs(12, 0)}
        assert len(first) == 48 and study <= first and len(seconds) == 8 and seconds <= study
        archs = [supernet.parse_arch(a) for a in sorted(first)]
        depth, kernel = ranking.choice_scores(archs).T
        for scores in (depth, kernel):  # every sixth of each axis holds archs
            assert np.all(np.histogram(scores, bins=6, range=(0, 1))[0] >= 3)
        bands = rank_bench.gmacs_bands(64, 96)[[supernet.arch_to_index(a) for a in archs]]
        assert np.bincount(bands, minlength=12).min() >= 3  # every twelfth of the space's costs too

    def test_the_rows_kept_record_the_plans_command_and_the_plans_scoring(self):
        plan = rank_bench.read_plan(str(BENCH))
        for name, row in rank_bench.read_rows(str(BENCH), plan).items():  # a run's folder is not part of its recipe
            assert row["command"] == (f"taskset -c 0 python train.py --config rankbench/setting.json --arch "
                                      f"{row['arch']} --seed {row['seed']} --output_dir outputs/rankbench "
                                      f"--experiment_name {name}")
            assert row["scoring"] == plan["scoring"] and len(row["pair_epe"]) == plan["scoring"]["val_pairs"]

    def test_a_setting_changed_after_the_plan_is_refused(self, tmp_path):
        shutil.copytree(BENCH, tmp_path / "b", ignore=shutil.ignore_patterns("rows"))
        (tmp_path / "b" / "setting.json").write_text((BENCH / "setting.json").read_text().replace("8192", "8191"))
        with pytest.raises(errors.RankError, match="changed since the plan was fixed"):
            rank_bench.read_plan(str(tmp_path / "b"))

    def test_a_setting_without_fixed_steps_is_refused(self, tmp_path, capsys):
        plan = _tiny_bench(tmp_path / "bench", ["0,0,0,0,0,0,0,0,0"], [], fingerprint=False, setting={
            "synthetic": True, "synthetic_train_size": 8, "batch_size": 2, "num_epochs": 3})  # an epoch: the data
        assert rank_bench.setting_config(str(tmp_path / "bench"))["steps_per_epoch"] == 0 and plan["rows"]
        code, err = _run_main(rank.main, ["--bench", str(tmp_path / "bench")], capsys)
        assert code == 1 and err == [f"error: {tmp_path / 'bench' / 'setting.json'}: steps_per_epoch must be set "
                                     "(> 0): a row trains a fixed number of steps, whatever the size of its data"]

    @pytest.mark.slow
    def test_training_matches_the_plans_fingerprint(self):
        """The rows stay comparable only while this passes: if it fails, training, data or the space
        changed, and the bench must be versioned (a new folder and plan) or its rows trained again."""
        plan = rank_bench.read_plan(str(BENCH))
        assert rank_bench.check_fingerprint(str(BENCH), plan) == pytest.approx(plan["fingerprint"]["losses"],
                                                                                abs=1e-6)

    def test_a_moved_fingerprint_is_refused(self, monkeypatch):
        plan = rank_bench.read_plan(str(BENCH))
        moved = list(plan["fingerprint"]["losses"])
        moved[-1] += 2e-6
        monkeypatch.setattr(rank_bench, "pinned_fingerprint", lambda *args: moved)
        with pytest.raises(errors.RankError, match="training has changed"):
            rank_bench.check_fingerprint(str(BENCH), plan)

    def test_report_against_a_hand_computation(self):
        archs, rows, supernet_epe, plan = _hand_bench()
        report = rank_bench.bench_report(plan, rows, supernet_epe, 50, 0)
        order = sorted(range(6), key=lambda i: archs[i])  # the report ranks by arch code
        sup = [supernet_epe[archs[i]] for i in order]
        alone = [rows[f"r{i}"]["epe"] for i in order]
        assert report["kendall_tau_b"] == pytest.approx(_kendall_by_pairs(sup, alone))
        codes = [supernet.parse_arch(archs[i]) for i in order]  # what each order follows, by the design
        for name, feature in (("GMACs", [rows[f"r{i}"]["gmacs"] for i in order]), ("DB1", [c[3] for c in codes]),
                              ("kernel", [np.mean(c[4:]) / 2 for c in codes])):
            assert report["follows"][name] == pytest.approx({"supernet": _kendall_by_pairs(feature, sup),
                                                             "alone": _kendall_by_pairs(feature, alone)})
        two = rank_bench.what_orders_follow([rows["r0"], rows["r1"]],  # 000000012, 000002212
                                            {"supernet": supernet_epe, "refined": {archs[0]: 1.0, archs[1]: 1.1}})
        assert [b for b, taus in two.items() if taus["alone"] is None] == ["depth", "EB0", "EB1", "DB0", "DB1",
                                                                             "H0Out", "H2", "H2Out"]
        assert two["H1"] == {"supernet": 1.0, "refined": 1.0, "alone": -1.0}  # H1 at 7x7: supernet 1.6, alone 1.0
        read_back = {f: dict(sorted(taus.items())) for f, taus in sorted(two.items())}  # as from sorted JSON
        table = rank_bench.follows_lines(read_back)[1:]
        assert table[0] == "| EPE against | supernet | refined | alone |" and table[1] == "|---|---|---|---|"
        assert [line.split(" | ")[0] for line in table[2:]] == ["| GMACs", "| depth", "| kernel", "| EB0", "| EB1",
                                                                "| DB0", "| DB1", "| H0Out", "| H1", "| H1Out",
                                                                "| H2", "| H2Out"]
        assert table[3] == "| depth | n/a | n/a | n/a |" and table[10] == "| H1 | +1.00 | +1.00 | -1.00 |"
        lowest = lambda v, k: set(np.argsort(v)[:k])  # noqa: E731
        for k in (1, 3, 5):
            assert report["top_k_overlap"][str(k)] == len(lowest(sup, k) & lowest(alone, k)) / k
        # regret by hand: bands around 0.30-0.32 (all three within 10% of 0.31) and 0.50-0.52
        bands = {(b["members"], b["pick"], b["best"]): b for b in report["regret"]["bands"]}
        low = [0, 1, 2]
        pick = min(low, key=lambda i: supernet_epe[archs[i]])
        best = min(low, key=lambda i: rows[f"r{i}"]["epe"])
        band = bands[(3, archs[pick], archs[best])]
        d = np.array(rows[f"r{pick}"]["pair_epe"]) - np.array(rows[f"r{best}"]["pair_epe"])
        assert band["regret"] == pytest.approx(d.mean())
        assert band["regret_se"] == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(len(d))))
        regret_line = next(line for line in rank_bench.report_lines(report) if line.startswith("regret in"))
        high_pick = min([3, 4], key=lambda i: supernet_epe[archs[i]])
        high_best = min([3, 4], key=lambda i: rows[f"r{i}"]["epe"])
        picked_best = (pick == best) + (high_pick == high_best)
        assert regret_line.endswith(f"the supernet's pick is the band's best in {picked_best} of 2")
        ceiling = report["seed_ceiling"]
        first, second = [rows[f"r{i}"]["epe"] for i in (0, 2, 4)], [rows[f"s{i}"]["epe"] for i in (0, 2, 4)]
        by_arch = sorted(range(3), key=lambda j: archs[(0, 2, 4)[j]])
        assert ceiling["archs"] == 3 and ceiling["kendall_tau_b"] == pytest.approx(
            _kendall_by_pairs([first[j] for j in by_arch], [second[j] for j in by_arch]))

    def test_a_resumed_row_weighs_the_steps_it_has_left(self, tmp_path):
        planned = {"gmacs": 0.5}
        assert bench_chunks.row_minutes_left(planned, str(tmp_path / "fresh"), 6000) == bench_chunks.row_core_minutes(
            planned) == pytest.approx(13.6 + (0.5 - 0.278) * (33.9 - 13.6) / (0.770 - 0.278))
        (tmp_path / "run" / "checkpoints" / "last").mkdir(parents=True)
        (tmp_path / "run" / "checkpoints" / "last" / ckpt.META_NAME).write_text(json.dumps({"global_step": 1500}))
        assert bench_chunks.row_minutes_left(planned, str(tmp_path / "run"), 6000) == pytest.approx(
            0.75 * bench_chunks.row_core_minutes(planned))

    def test_rows_that_do_not_fit_the_plan_are_refused(self, tmp_path):
        folder = tmp_path / "b"
        shutil.copytree(BENCH, folder, ignore=shutil.ignore_patterns("rows"))
        plan = rank_bench.read_plan(str(folder))
        planned = plan["rows"][0]
        row = _hand_row(planned["name"], planned["arch"], 43, [1.0] * 1024, planned["gmacs"])
        rank_bench.write_row(str(folder), row)
        with pytest.raises(errors.RankError, match="seed 43"):
            rank_bench.read_rows(str(folder), plan)
        rank_bench.write_row(str(folder), dict(row, seed=42, pair_epe=[1.0] * 10))
        with pytest.raises(errors.RankError, match="1024 finite errors"):
            rank_bench.read_rows(str(folder), plan)
        os.remove(rank_bench.row_path(str(folder), planned["name"]))
        (folder / "rows" / "nosuch_s42.json").write_text("{}")
        with pytest.raises(errors.RankError, match="not a row of the plan"):
            rank_bench.read_rows(str(folder), plan)

    @pytest.mark.slow
    def test_chunks_train_each_row_once_and_a_row_trained_again_reproduces_it(self, tmp_path, monkeypatch, capsys):
        archs = ["0,0,0,0,0,0,0,0,0", "2,2,2,2,2,2,2,2,2"]
        plan = _tiny_bench(tmp_path / "bench", archs, [], fingerprint=False)
        bench, runs = str(tmp_path / "bench"), str(tmp_path / "runs")
        jobs = str(min(2, len(parallel.usable_cores())))
        checked = []  # the rows' run folders when each chunk checks the fingerprint (its own tests are above)
        monkeypatch.setattr(rank_bench, "check_fingerprint", lambda bench_dir, plan: checked.append(
            [r["name"] for r in plan["rows"] if os.path.isdir(os.path.join(runs, r["name"]))]))
        assert rank.main(["--bench", bench, "--train_rows", "1", "--runs_dir", runs, "--jobs", jobs]) == 0
        rows = rank_bench.read_rows(bench, plan)
        assert sorted(rows) == [plan["rows"][0]["name"]]
        for name, row in rows.items():
            assert not os.path.exists(os.path.join(runs, name, "checkpoints"))  # the row is what is kept
            assert row["steps"] == 6 and row["command"] == (  # from the repository root, with no path of this machine
                f"taskset -c 0 python train.py --config bench/setting.json --arch {row['arch']} --seed {row['seed']} "
                f"--output_dir outputs/rankbench --experiment_name {name}")
            assert row["epe"] == pytest.approx(np.mean(row["pair_epe"]), abs=1e-6)
            history = ranking.read_history(os.path.join(runs, name), supernet.parse_arch(row["arch"]))
            assert row["stopping"] == stopping.figures(history, row["zero_flow_epe"])
        written = {n: os.path.getmtime(rank_bench.row_path(bench, n)) for n in rows}
        assert rank.main(["--bench", bench, "--train_rows", "5", "--runs_dir", runs, "--jobs", jobs]) == 0
        rows = rank_bench.read_rows(bench, plan)
        assert len(rows) == 2 and all(os.path.getmtime(rank_bench.row_path(bench, n)) == t
                                      for n, t in written.items())  # never a row twice
        assert checked == [[], [plan["rows"][0]["name"]]]  # each chunk checks before it trains
        # a standalone run is not a supernet to score against the rows
        assert rank.main(["--bench", bench, "--supernet", runs + "/" + plan["rows"][0]["name"]]) == 1
        # a row trained again from its recorded command, on one core (in a runs folder not made yet): the same
        # EPE on every pair
        first, runs = plan["rows"][0]["name"], str(tmp_path / "again")
        capsys.readouterr()
        assert rank.main(["--bench", bench, "--reproduce", first, "--runs_dir", runs]) == 0
        out = capsys.readouterr().out
        again = json.loads((tmp_path / "again" / f"{first}_again.json").read_text())
        assert again["again_epe"] == again["recorded_epe"] == rows[first]["epe"] and again["max_pair_difference"] == 0
        assert again["again"]["command"].endswith(f"--experiment_name {first}_again") and len(checked) == 3
        assert f"row {first} trained again: EPE {rows[first]['epe']:.6f}, recorded {rows[first]['epe']:.6f}" in out
        assert not (tmp_path / "again" / f"{first}_again" / "checkpoints").exists()
        assert rank.main(["--bench", bench, "--reproduce", first, "--runs_dir", runs]) == 0 and len(checked) == 3
        rerun = capsys.readouterr().out  # kept: nothing trained again, the same figures
        assert "started" not in rerun and rerun.splitlines()[-2:] == out.splitlines()[-2:]
        assert rank.main(["--bench", bench, "--reproduce", "nosuchrow", "--runs_dir", runs]) == 1
        assert "nosuchrow.json: no such row to reproduce" in capsys.readouterr().err
        kept = tmp_path / "again" / f"{first}_again.json"  # made from another record of the row: not handed back
        kept.write_text(json.dumps(dict(again, recorded_epe=again["recorded_epe"] + 0.1)))
        assert rank.main(["--bench", bench, "--reproduce", first, "--runs_dir", runs]) == 1
        assert f"a reproduction of another record of {first} or another setting: move" in capsys.readouterr().err
        kept.unlink()  # its checkpoints are gone with it: said, not a checkpoint error
        assert rank.main(["--bench", bench, "--reproduce", first, "--runs_dir", runs]) == 1
        assert "trained, but its checkpoints are gone and its result is not kept" in capsys.readouterr().err
        for flags in (["--reproduce", first], ["--bench", bench, "--reproduce", first, "--train_rows", "1"],
                      ["--bench", bench, "--reproduce", first, "--jobs", "2"]):
            with pytest.raises(SystemExit):
                rank.parse_args(flags)


# ==== 40. bench_methods.py: remedies for the supernet's ranking against the bench's rows =============================

class TestBenchMethods:
    def test_methods_against_a_hand_computation(self):
        archs, rows, supernet_epe, plan = _hand_bench()
        report = rank_bench.bench_report(plan, rows, supernet_epe, 50, 0)
        order = sorted(range(6), key=lambda i: archs[i])  # the report ranks by arch code
        alone = [rows[f"r{i}"]["epe"] for i in order]
        epe = {archs[i]: rows[f"r{i}"]["epe"] for i in range(6)}
        refined = dict(zip(archs, [1.00, 0.90, 1.05, 0.70, 0.75, 0.60]))
        eight = dict(config.defaults()["refine"], steps=8)
        slower = dict(eight, lr_scale=0.1)  # the same EPEs at another learning rate: only its name and line differ
        methods = bench_methods.methods_table(plan, rows, supernet_epe, 300, [(eight, refined), (slower, refined)],
                                              50, 0, 1.0)
        table = {m["method"]: m for m in methods}
        # two cost bands: 0.30-0.32 and 0.50-0.52 (0.70 has no neighbour within 10%); in each, the
        # supernet's K lowest are shortlisted and the lowest refined (or standalone) EPE among them is picked
        for k, name, chosen_by in ((2, "its 2 lowest per band refined 8 steps", refined),
                                   (4, "its 4 lowest per band refined 8 steps", refined),
                                   (None, "every arch refined 8 steps", refined),
                                   (2, "its 2 lowest per band trained alone (the rows)", epe),
                                   (1, "supernet", supernet_epe)):
            regrets = []
            for band in ([0, 1, 2], [3, 4]):
                short = sorted(band, key=lambda i: supernet_epe[archs[i]])[:k or len(band)]
                pick = min(short, key=lambda i: chosen_by[archs[i]])
                regrets.append(epe[archs[pick]] - min(epe[archs[i]] for i in band))
            assert table[name]["regret_mean"] == pytest.approx(np.mean(regrets)) and table[name]["bands"] == 2
            assert table[name]["pick_is_best"] == sum(r == 0 for r in regrets) and table[name]["once_steps"] == 300
        assert table["its 2 lowest per band refined 8 steps"]["regret_mean"] > 0  # the shortlist misses the best here
        assert table["every arch refined 8 steps"]["regret_mean"] == 0
        assert table["every arch refined 8 steps"]["kendall_tau_b"] == pytest.approx(
            _kendall_by_pairs([refined[archs[i]] for i in order], alone))
        assert table["its 2 lowest per band refined 8 steps"]["kendall_tau_b"] is None  # it orders only its shortlists
        assert table["supernet"]["kendall_tau_b"] == report["kendall_tau_b"]
        shortlists = ("its 2 lowest per band", "its 4 lowest per band", "every arch")
        assert [m["method"] for m in methods[4:7]] == [f"{k} refined 8 steps at 0.1x lr" for k in shortlists]
        assert [{**m, "method": ""} for m in methods[4:7]] == [{**m, "method": ""} for m in methods[1:4]]
        alone_two = table["its 2 lowest per band trained alone (the rows)"]
        assert alone_two["steps_per_pick"] == 2 * 1  # 2 a band, rows of 1 step
        assert table["its 4 lowest per band refined 8 steps"]["steps_per_pick"] == (3 + 2) / 2 * 8  # all of both bands
        halved = bench_methods.methods_table(plan, rows, supernet_epe, 300, [(eight, refined)], 50, 0, 0.5)
        assert halved[1]["steps_per_pick"] == 2 * 8 * 0.5  # a child at half the bench's batch: half a step each
        assert halved[1]["method"] == "its 2 lowest per band refined 8 steps"


    @pytest.mark.slow
    def test_a_supernet_and_its_refined_archs_are_scored_against_the_rows(self, tiny_runs, tmp_path, capsys):
        sup = tmp_path / "sup"  # a copy of the suite's tiny supernet, and a bench on its data
        shutil.copytree(tiny_runs / "whole", sup / "s", ignore=lambda folder, names: [
            n for n in names if n.startswith(("export_", "deploy", "search_", "refine", "rank"))])
        trained = json.loads((sup / "s" / "config.json").read_text())
        setting = {k: trained[k] for k in ("synthetic", "synthetic_train_size", "synthetic_val_size", "synthetic_seed",
                                           "synthetic_scene", "seed", "input_h", "input_w", "batch_size")}
        setting["steps_per_epoch"] = 2  # a bench fixes its rows' steps
        archs, unrowed = ["0,0,0,0,0,0,0,0,0", "1,1,1,1,1,1,1,1,1", "2,2,2,2,2,2,2,2,2"], "0,1,2,0,1,2,0,1,2"
        plan = _tiny_bench(tmp_path / "bench", archs + [unrowed], archs[:1], fingerprint=False, setting=setting)
        bench, jobs = str(tmp_path / "bench"), str(min(2, len(parallel.usable_cores())))
        for i, planned in enumerate(r for r in plan["rows"] if r["arch"] != unrowed):  # rows are data: by hand here
            rank_bench.write_row(bench, _hand_row(planned["name"], planned["arch"], planned["seed"],
                                                  [1.0 + 0.1 * i, 1.2, 0.9, 1.1 - 0.05 * i], planned["gmacs"]))
        capsys.readouterr()
        # the supernet's order and every arch fine-tuned from it, its last checkpoint scored on the rows' batches
        refine = ["--bench", bench, "--supernet", str(sup / "s"), "--bootstrap", "50", "--refine_steps", "4"]
        assert rank.main(refine + ["--jobs", jobs]) == 0
        out = capsys.readouterr().out
        report = json.loads((sup / "s" / "rank_bench" / "rank_report.json").read_text())
        assert report["num_archs"] == 3 and report["rows"] == 4 and (sup / "s" / "rank_bench" / "rank.png").exists()
        assert "Kendall tau-b" in out and "top-1" in out and "regret" in out and "seed ceiling" in out
        scored = rank_bench.scoring_data(bench, plan)
        column = pathlib.Path(bench) / "scores" / "s.json"  # the scores, kept as data beside the rows
        assert f"the supernet's scores of 3 archs: 0 kept in {column}, scoring 3" in out
        for row in report["archs"]:  # the supernet's EPE of each arch: its pairs' mean, from its own scorer
            alone = rank_bench.pair_epes(str(sup / "s"), supernet.parse_arch(row["arch"]), "best", scored, False)
            assert row["supernet_epe"] == pytest.approx(alone.mean(), abs=1e-5)
        settings = dict(config.defaults()["refine"], steps=4)
        for code, epe in report["refined"]["refine_n4_e4"].items():
            child = refining.child_dir_of(str(sup / "s"), code, settings)
            assert json.loads(open(os.path.join(child, "train_report.json")).read())["global_step"] == 4
            alone = rank_bench.pair_epes(child, supernet.parse_arch(code), "last", scored)
            assert epe == pytest.approx(alone.mean(), abs=1e-5)
        assert sorted(report["refined"]["refine_n4_e4"]) == sorted(archs)
        ranked, _ = rank_bench.ranked_and_second(plan, rank_bench.read_rows(bench, plan))  # what each order follows
        assert report["follows"] == rank_bench.what_orders_follow(ranked, {
            "supernet": {r["arch"]: r["supernet_epe"] for r in report["archs"]},
            "refined 4 steps": report["refined"]["refine_n4_e4"]})
        names = [m["method"] for m in report["methods"]]
        assert (sup / "s" / "rank_bench" / "methods.png").stat().st_size > 10000
        assert names[0] == "supernet" and "every arch refined 4 steps" in names
        # run again: no child trained or scored twice, the same table
        trained = glob.glob(str(sup / "s" / "refine" / "runs" / "*" / "train_report.json"))
        kept = {p: os.path.getmtime(p) for p in trained}
        capsys.readouterr()
        assert rank.main(refine) == 0
        out = capsys.readouterr().out
        assert f"the supernet's scores of 3 archs: 3 kept in {column}, scoring 0" in out
        assert f"refined 4 steps: 3 of 3 archs kept in {column}" in out and "refining" not in out
        assert " each, time left" not in out  # no arch scored by the supernet again
        again = json.loads((sup / "s" / "rank_bench" / "rank_report.json").read_text())
        assert again["methods"] == report["methods"] and again["archs"] == report["archs"]
        assert all(os.path.getmtime(p) == t for p, t in kept.items()) and len(kept) == 3
        methods = json.loads(column.read_text())["methods"]
        assert methods["supernet_best"]["epe"] == {r["arch"]: r["supernet_epe"] for r in report["archs"]}
        assert methods["refine_n4_e4"]["epe"] == report["refined"]["refine_n4_e4"]
        # on another machine the outputs are gone and the supernet is trained again to the same bytes:
        # the kept scores stand for it, nothing is trained or scored
        shutil.rmtree(sup / "s" / "refine")
        shutil.rmtree(sup / "s" / "rank_bench")
        assert rank.main(refine) == 0
        assert "refining" not in capsys.readouterr().out and not (sup / "s" / "refine").exists()
        assert json.loads((sup / "s" / "rank_bench" / "rank_report.json").read_text())["methods"] == report["methods"]
        # --plan_archs: the plan's arch without a row is scored and refined too, kept for when its row lands
        assert rank.main(refine + ["--plan_archs"]) == 0
        out = capsys.readouterr().out
        assert f"the supernet's scores of 4 archs: 3 kept in {column}, scoring 1" in out
        assert len(glob.glob(str(sup / "s" / "refine" / "runs" / "*" / "train_report.json"))) == 1
        planned = json.loads(column.read_text())["methods"]
        assert set(planned["supernet_best"]["epe"]) == set(planned["refine_n4_e4"]["epe"]) == set(archs + [unrowed])
        again = json.loads((sup / "s" / "rank_bench" / "rank_report.json").read_text())
        assert again["methods"] == report["methods"] and again["refined"] == report["refined"]
        assert rank.main(["--bench", bench]) == 0  # the status says what the kept scores cover
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"kept scores {column}: refine_n4_e4 4 of 4 archs (3 of the 3 with rows), supernet_best 4 of 4 archs "
            f"(3 of the 3 with rows); compute kept")
        # the same report from the kept scores alone, with no supernet at hand
        (sup / "s").rename(sup / "away")
        from_kept = ["--bench", bench, "--kept_scores", str(column), "--bootstrap", "50", "--out", str(tmp_path / "k")]
        assert rank.main(from_kept + ["--refine_steps", "4"]) == 0
        alone = json.loads((tmp_path / "k" / "rank_report.json").read_text())
        assert alone["methods"] == report["methods"] and alone["archs"] == report["archs"]
        assert alone["supernet"] is None and alone["kept_scores"] == str(column)
        from_kept[from_kept.index(str(column))] = str(tmp_path / "changed.json")
        for change, steps, says in (  # a kept file that cannot make the report is refused, naming it and why
                (lambda c: c["methods"]["refine_n4_e4"]["epe"].pop(archs[1]), "4",
                 "'refine_n4_e4' lacks 1 of the 3 archs with rows"),
                (lambda c: c.pop("compute"), "4", "no 'compute' kept"),
                (lambda c: c["methods"]["refine_n4_e4"].update(checkpoint_sha256="0" * 64), "4",
                 "its 'refine_n4_e4' scores come from a checkpoint with other bytes than its compute's supernet"),
                (lambda c: None, "8", "no 'refine_n8_e4' scores kept (it holds refine_n4_e4, supernet_best)")):
            changed = json.loads(column.read_text())
            change(changed)
            (tmp_path / "changed.json").write_text(json.dumps(changed))
            code, err = _run_main(rank.main, from_kept + ["--refine_steps", steps], capsys)
            assert code == 1 and len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'changed.json'}: ")
            assert says in err[0]
        code, err = _run_main(rank.main, from_kept + ["--refine_steps", "4", "--refine_lr_scale", "0.5"], capsys)
        assert code == 1 and "no 'refine_n4_e4_lr0.5' scores kept" in err[0]  # another learning rate: not these
        assert rank.main(from_kept) == 0  # without the refine stage, its scores are not asked for
        (sup / "away").rename(sup / "s")
        with ckpt.writer_lock(str(sup / "s" / "rank_bench"), "held"):  # one scoring of a supernet at a time
            code, err = _run_main(rank.main, refine, capsys)
        assert code == 1 and len(err) == 1 and "is being written by another process" in err[0]
        # scores of a checkpoint with other bytes are refused, naming the file: the compute's, before any work
        other = json.loads(column.read_text())
        other["compute"]["checkpoint_sha256"]["best"] = "0" * 64
        column.write_text(json.dumps(other))
        code, err = _run_main(rank.main, refine, capsys)
        assert code == 1 and len(err) == 1 and f"{column}: kept for a supernet whose checkpoints" in err[0]
        methods["refine_n4_e4"]["checkpoint_sha256"] = "0" * 64
        column.write_text(json.dumps({"batches_sha256": json.loads(column.read_text())["batches_sha256"],
                                      "methods": methods}))
        code, err = _run_main(rank.main, refine, capsys)
        assert code == 1 and len(err) == 1 and f"{column}: its 'refine_n4_e4' scores come from a checkpoint" in err[0]


# ==== 41. cross-cutting: bad input, hostile input, one writer, code and import rules, flag help, the command line ====


def _imports(module):
    tree = ast.parse((HERE / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def _sessions_without_config(module):
    """Line numbers of tf.compat.v1.Session(...) calls in `module` that pass no `config`."""
    tree = ast.parse((HERE / f"{module}.py").read_text())
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and ast.unparse(node.func).endswith("compat.v1.Session")
            and not any(k.arg == "config" for k in node.keywords)]


def _fails_and_keeps(main, argv, capsys, folder, words):
    """main(argv) exits 1 with one line holding `words`, and `folder` is byte for byte as it was."""
    before = _folder_bytes(folder)
    code, err = _run_main(main, argv, capsys)
    assert code == 1 and len(err) == 1 and words in err[0], err
    assert _folder_bytes(folder) == before


_FLAGS_BEFORE_TENSORFLOW = r'''
import contextlib, io, json, sys
import bench, deploy, evaluate, export, rank, refine, search, train
said = {}
for command in (bench, deploy, evaluate, export, rank, refine, search, train):
    for argv in (["--help"], ["--no_such_flag"]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.suppress(SystemExit), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            command.main(argv)
        said[f"{command.__name__} {argv[0]}"] = [out.getvalue(), err.getvalue()]
json.dump({"tensorflow": "tensorflow" in sys.modules, "said": said}, sys.stdout)
'''


def _import_graph():
    """{module: the project modules it imports anywhere in its source}, from the source with ast."""
    return {m: (_imports(m) & set(PRODUCT_MODULES)) - {m} for m in PRODUCT_MODULES}


class _ParserCaught(Exception):
    """Raised in place of parsing: the parser a main() built is what a test reads."""


class TestBadInput:
    @pytest.mark.parametrize("content, words", [
        ({"learning_rat": 0.1}, "unknown key 'learning_rat'"),
        ({"batch_size": "32"}, "key 'batch_size' must be int"),
        ({"synthetic": 1}, "key 'synthetic' must be bool"),
        ({"loss_weights": [1, 2]}, "key 'loss_weights' must be a list of 3"),
        ({"input_h": 30}, "h=30"),
        ({"eval_pool_size": 10}, "multiple of 3"),
        ({"eval_pool_size": 303}, "key 'eval_pool_size' must be at most 300"),
        ({"seed": 2**63}, f"key 'seed' must be at most {2**63 - 1}"),
        ({"synthetic_seed": 2**70}, f"key 'synthetic_seed' must be at most {2**63 - 1}"),
        ({"early_stop_min_delta": float("nan")}, "finite"),
        ({"adam_beta1": 5.0}, "adam_beta1"),
        ({"loss_weights": [-1, 0, 1]}, "loss_weights"),
    ])
    def test_bad_config_is_a_one_line_error(self, tmp_path, capsys, content, words):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(content))
        code, err = _run_main(train.main, ["--config", str(path), "--dry_run"], capsys)
        assert code != 0 and len(err) == 1 and words in err[0] and err[0].startswith("error:")

    @pytest.mark.slow
    def test_flags_win_over_fast_mode_and_resume_keeps_the_run_identity(self, tiny_runs, tmp_path, capsys):
        out = tiny_runs
        args, overrides = train.parse_args(["--fast_mode", "--eval_pool_size", "6"],
                                           config.read_config_file(config.DEFAULT_CONFIG))
        cfg, _ = train.resolve_config(args, overrides, config.read_config_file(config.DEFAULT_CONFIG))
        assert cfg["eval_pool_size"] == 6 and cfg["bn_recal_batches"] == cfg["fast_mode_overrides"]["bn_recal_batches"]
        code, err = _run_main(train.main, ["--resume", "--output_dir", str(out), "--experiment_name", "whole",
                                           "--eval_pool_size", "6", "--dry_run"], capsys)
        assert code != 0 and len(err) == 1 and "eval_pool_size" in err[0]
        # a fast_mode run whose flags overrode fast_mode_overrides resumes with its own resolved config
        (tmp_path / "fast").mkdir()
        saved = dict(config.defaults(), fast_mode=True, eval_pool_size=6, output_dir=str(tmp_path),
                     experiment_name="fast")
        (tmp_path / "fast" / "config.json").write_text(json.dumps(saved))
        args, overrides = train.parse_args(["--resume", "--output_dir", str(tmp_path), "--experiment_name", "fast",
                                            "--num_epochs", "3"], config.defaults())
        cfg, _ = train.resolve_config(args, overrides, config.defaults())
        assert cfg["eval_pool_size"] == 6 and cfg["num_epochs"] == 3 and cfg["fast_mode"]
        # the run's config.json edited by hand: the checkpoint's own config tells
        shutil.copytree(out / "whole", tmp_path / "edited")
        saved = json.loads((tmp_path / "edited" / "config.json").read_text())
        meta = tmp_path / "edited" / "checkpoints" / "last" / "meta.json"
        for key, value in (("seed", saved["seed"] + 1), ("synthetic_train_size", saved["synthetic_train_size"] + 8)):
            (tmp_path / "edited" / "config.json").write_text(json.dumps(dict(saved, **{key: value})))
            code, err = _run_main(train.main, ["--resume", "--output_dir", str(tmp_path),
                                               "--experiment_name", "edited", "--dry_run"], capsys)
            assert code == 1 and err == [
                f"error: {meta}: key '{key}' was {saved[key]} when the run started and is now {value}: the "
                "sampler, eval pool, history and data depend on it; start a new experiment"], err
        code, err = _run_main(train.main, ["--seed", str(2**63), "--dry_run"], capsys)
        assert code == 1 and err == [f"error: config: key 'seed' must be at most {2**63 - 1}, got {2**63}"], err
        # a pool above the cap: refused for a new run, read for a run made before it
        big = dict(config.defaults(), eval_pool_size=600)
        config.check_ranges(big)
        with pytest.raises(errors.ConfigError, match="key 'eval_pool_size' must be at most 300"):
            config.check_new_run(big)

    @pytest.mark.slow
    def test_damaged_checkpoint_is_a_one_line_error(self, tiny_runs, tmp_path, capsys):
        out = tiny_runs
        damaged = tmp_path / "damaged"
        subprocess.run(["cp", "-r", str(out / "whole"), str(damaged)], check=True)
        data_file = next((damaged / "checkpoints" / "last").glob("*.data-*"))
        data_file.write_bytes(data_file.read_bytes()[:100])
        code, err = _run_main(evaluate.main, ["--output_dir", str(tmp_path), "--experiment_name", "damaged",
                                              "--checkpoint_type", "last"], capsys)
        assert code != 0 and len(err) == 1 and "cannot restore" in err[0]

    def test_bench_flags_are_checked_before_the_benchmark(self, tmp_path, capsys):
        for path in (tmp_path, tmp_path / "missing" / "x.json"):
            with pytest.raises(SystemExit) as exit_info:
                bench.parse_args(["--json", str(path)])
            err = capsys.readouterr().err
            assert exit_info.value.code == 2 and f"--json {path}: must be a file in an existing folder" in err, err
        assert bench.parse_args(["--json", str(tmp_path / "b.json")])[1].json == str(tmp_path / "b.json")
        with pytest.raises(SystemExit) as exit_info:
            bench.parse_args(["--eval_subnets", "100000"])
        assert exit_info.value.code == 2 and "--eval_subnets 100000 must be at most 300" in capsys.readouterr().err

    def test_a_generated_run_name_carries_the_process_id(self):
        defaults = config.read_config_file(config.DEFAULT_CONFIG)
        cfg, run_dir = train.resolve_config(*train.parse_args([], defaults), defaults)
        # two train.py started in one second must not meet in one folder (the second would be refused)
        assert re.fullmatch(rf"supernet_\d{{8}}_\d{{6}}_{os.getpid()}", cfg["experiment_name"])
        assert run_dir == os.path.join(cfg["output_dir"], cfg["experiment_name"])

    def test_missing_dataset_is_a_one_line_error(self, tmp_path, capsys):
        code, err = _run_main(train.main, ["--base_path", str(tmp_path / "nowhere"), "--dry_run"], capsys)
        assert code != 0 and len(err) == 1 and "nowhere" in err[0]

    @pytest.mark.slow
    def test_malformed_arch_is_a_one_line_error(self, tiny_runs, capsys):
        out = tiny_runs
        code, err = _run_main(evaluate.main, ["--output_dir", str(out), "--experiment_name", "whole",
                                              "--checkpoint_type", "last", "--arch", "0,1,3,0,0,0,0,0,0"], capsys)
        assert code != 0 and len(err) == 1 and "field 2 (DB0)" in err[0]

    @pytest.mark.slow
    def test_missing_checkpoint_and_wrong_input_size_are_errors(self, tiny_runs, tmp_path, capsys):
        out = tiny_runs
        code, err = _run_main(evaluate.main, ["--output_dir", str(tmp_path), "--checkpoint_type", "best"], capsys)
        assert code != 0 and len(err) == 1 and "no experiment" in err[0]
        code, err = _run_main(train.main, ["--resume", "--output_dir", str(out), "--experiment_name", "whole",
                                           "--input_h", "64", "--dry_run"], capsys)
        assert code != 0 and len(err) == 1 and "input_h" in err[0]
        meta = ckpt.load_meta(str(out / "whole"), "last")
        with pytest.raises(errors.CheckpointError, match="input_size"):
            ckpt.check_compatible(meta, 64, 48, "whole")

    @pytest.mark.slow
    def test_dry_run_announces_synthetic_data_and_writes_nothing(self, tmp_path, capsys):
        code = train.main(["--dry_run", "--output_dir", str(tmp_path)] + RUN_FLAGS)
        out = capsys.readouterr().out
        assert code == 0 and "synthetic data: no base_path configured" in out and "fair steps" in out
        assert not list(tmp_path.iterdir())


class TestHostileInput:
    @pytest.mark.slow
    def test_damaged_search_parts_are_named_and_nothing_is_merged(self, search_run, capsys):
        out, run_dir = search_run
        common = ["--output_dir", str(out), "--experiment_name", "tiny", "--archs", "0,0,0,0,0,0,0,0,0",
                  "2,2,2,2,2,2,2,2,2", "1,1,1,1,1,1,1,1,1"]  # a set of its own: other tests leave parts of theirs
        assert search.main(common) == 0
        part = pathlib.Path(search.search_dir_for(str(run_dir), search.parse_args(common), "")) / "part_1of1"
        unit = sorted((part / "units").glob("unit_*.json"))[0]
        good = json.loads(unit.read_text())
        head = next(iter(good["rows"]))
        for damaged, words in ((dict(good, rows=None), "field 'rows' missing"),
                               ({k: v for k, v in good.items() if k != "rows"}, "field 'rows' missing"),
                               (dict(good, rows={head: dict(good["rows"][head], epe="abc")}), "'epe' is 'abc'"),
                               (dict(good, rows={head: dict(good["rows"][head], epe=float("nan"))}), "'epe' is nan"),
                               ([good], "must hold a JSON object")):
            unit.write_text(json.dumps(damaged))
            _fails_and_keeps(search.main, common + ["--merge"], capsys, run_dir, f"search unit {unit}")
        unit.write_text(json.dumps(good))
        manifest = part / "manifest.json"
        kept = manifest.read_text()
        manifest.write_text(json.dumps([1, 2]))
        _fails_and_keeps(search.main, common + ["--merge"], capsys, run_dir, f"manifest {manifest}: must hold a JSON")
        manifest.write_text(kept)
        for flags, words in ((["--max_gmacs", "-1"], "--max_gmacs -1.0 must be a positive number"),
                             (["--max_gmacs", "nan"], "--max_gmacs nan must be a positive number"),
                             (["--sample", "3", "--seed", "-1"], "--seed -1 must be >= 0")):
            if flags[0] == "--sample":
                _fails_and_keeps(search.main, common[:4] + flags, capsys, run_dir, words)
            else:
                with pytest.raises(SystemExit):
                    search.main(common + flags)
                assert words in capsys.readouterr().err

    def test_bad_lists_and_tables_are_named(self, tmp_path, capsys):
        (tmp_path / "latin1.txt").write_bytes("0,0,0,0,0,0,0,0,0 # caf\xe9\n".encode("latin-1"))
        with pytest.raises(errors.SearchError, match=f"--archs_file {tmp_path / 'latin1.txt'}: not UTF-8"):
            search_parts.select_archs(archs=None, archs_file=str(tmp_path / "latin1.txt"), sample=None, seed=0)
        for name, rows, words in (("latin1.csv", None, "not UTF-8"),
                                  ("twice.csv", [("0,0,0,0,0,0,0,0,0", 1.0), ("0,0,0,0,0,0,0,0,0", 2.0)],
                                   "listed twice"),
                                  ("flat.csv", [(supernet.format_arch(a), 1.0) for a in supernet.random_archs(4, 0)],
                                   "the same EPE: there is no order")):
            path = tmp_path / name
            if rows is None:
                path.write_bytes("arch,epe\n0,0,0,0,0,0,0,0,0,1.0 caf\xe9\n".encode("latin-1"))
            else:
                _write_scores(path, [(a, 1.0, e) for a, e in rows])
            code, err = _run_main(rank.main, ["--compare", str(path), str(path)], capsys)
            assert code == 1 and len(err) == 1 and str(path) in err[0] and words in err[0], err
        table = {"format": edge_tables.TABLE_FORMAT, "space_version": supernet.SPACE.version,
                 "accelerator_config": "a",
                 "system_config": "s", "memory_mode": "m", "clock_hz": 1e6, "input_size": [32, 48], "fixed_cycles": 0,
                 "context_blocks": edge_tables.context_blocks(),
                 "block_cycles": {b: [[0] * 3] * 3 for b in supernet.SPACE.blocks}}
        (tmp_path / "zero.json").write_text(json.dumps(table))
        with pytest.raises(errors.ExportError, match="every subnet would take 0 cycles"):
            edge_tables.load_latency_table(str(tmp_path / "zero.json"))

    @pytest.mark.slow
    def test_runs_with_damaged_configs_and_reports_are_named(self, export_run, tmp_path, capsys):
        broken = tmp_path / "broken"
        shutil.copytree(export_run / "whole", broken)
        cfg = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "input_h"}))
        _fails_and_keeps(export.main, ["--output_dir", str(tmp_path), "--experiment_name", "broken", "--arch",
                                       "0,0,0,0,0,0,0,0,0"], capsys, broken,
                         f"{broken / 'config.json'}: key 'input_h'")
        (broken / "config.json").write_text(json.dumps(dict(cfg, arch="0,1,2,0,1,2,0,1")))
        _fails_and_keeps(evaluate.main, ["--output_dir", str(tmp_path), "--experiment_name", "broken"], capsys, broken,
                         f"{broken / 'config.json'}: key 'arch': arch code '0,1,2,0,1,2,0,1' has 8 fields")
        (broken / "config.json").write_text(json.dumps(cfg))
        pool = next(broken.glob("eval_pool_*.json"))
        pool.write_text(json.dumps({"archs": ["0,1,2,0,1,2,0,1,3"]}))
        _fails_and_keeps(evaluate.main, ["--output_dir", str(tmp_path), "--experiment_name", "broken"], capsys, broken,
                         f"{pool}: arch code '0,1,2,0,1,2,0,1,3': field 8 (H2Out)")
        _fails_and_keeps(evaluate.main, ["--output_dir", str(tmp_path), "--experiment_name", "broken", "--arch",
                                         "0,0,0,0,0,0,0,0,0", "--arch", "0,0,0,0,0,0,0,0,0"], capsys, broken,
                         "--arch 0,0,0,0,0,0,0,0,0 is given more than once")
        report = json.loads((broken / "train_report.json").read_text())
        for damaged, words in (({k: v for k, v in report.items() if k != "data_source"}, "field 'data_source'"),
                               ([report], "must hold a JSON object")):
            (broken / "train_report.json").write_text(json.dumps(damaged))
            _fails_and_keeps(rank.main, ["--supernet", str(export_run / "whole"), "--standalone", str(broken),
                                         str(broken), str(broken)], capsys, broken,
                             f"{broken / 'train_report.json'}")

    @pytest.mark.slow
    def test_an_export_is_whole_or_not_there(self, export_run, tmp_path, capsys):
        run = tmp_path / "out" / "whole"  # a copy: another test may export all-0 from the shared run
        shutil.copytree(export_run / "whole", run, ignore=lambda folder, names: [
            n for n in names if n.startswith(("export_", "deploy", "search_", "refine"))])
        flags = ["--output_dir", str(run.parent), "--experiment_name", "whole", "--arch", "0,0,0,0,0,0,0,0,0",
                 "--repeats", "1", "--warmup", "0"]
        fake = tmp_path / "vela"
        fake.write_text("#!/bin/sh\necho 'vela 5.2.0'\n[ \"$1\" = --version ] && exit 0\n"
                        "echo 'Error: it broke' >&2\nexit 1\n")
        fake.chmod(0o755)
        stale = run / "export_000000000.tmp999999"
        stale.mkdir()
        for extra, words in ((["--system_config", "NoSuch"], "has no section [System_Config.NoSuch]"),
                             (["--eval_batches", "-1"], "--eval_batches -1 is out of range"),
                             (["--input_h", "4", "--input_w", "4"], "h=4 must be a multiple of 4 from 16 to 4096"),
                             (["--input_w", "100000"], "w=100000 must be a multiple of 4 from 16 to 4096"),
                             (["--vela", str(fake)], "Vela failed on")):
            code, err = _run_main(export.main, flags + extra, capsys)
            assert code == 1 and len(err) == 1 and words in err[0], err
            assert not (run / "export_000000000").exists()
        assert not stale.exists()  # a killed export's temp folder: removed by the next export
        (run / "export_000000000").write_text("in the way")
        code, err = _run_main(export.main, flags, capsys)
        assert code == 1 and "a file of that name is in the way" in err[0]
        (run / "export_000000000").unlink()


class TestOneWriter:
    def test_a_run_name_that_leaves_output_dir_is_refused(self, tmp_path, capsys):
        out = tmp_path / "out"
        for name in ("../escaped", "a/b", ".."):
            assert train.main(RUN_FLAGS + ["--output_dir", str(out), "--experiment_name", name]) == 1
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and f"experiment name {name!r} must be a plain folder name" in err
        assert evaluate.main(["--output_dir", str(out), "--experiment_name", "../escaped"]) == 1
        assert "must be a plain folder name" in capsys.readouterr().err
        assert not list(tmp_path.iterdir())

    @pytest.mark.slow
    def test_a_second_writer_is_refused_naming_the_holder(self, tiny_runs, capsys):
        out = tiny_runs
        run = out / "whole"
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
        with ckpt.writer_lock(str(run), "run"):
            code = train.main(["--resume", "--output_dir", str(out), "--experiment_name", "whole",
                               "--num_epochs", "3"])
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1
        assert f"run {run} is being written by another process (PID {os.getpid()})" in err
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before

    @pytest.mark.slow
    def test_a_killed_writer_leaves_no_stale_lock(self, tmp_path):
        script = ("import sys, time; sys.path.insert(0, sys.argv[1]); import ckpt\n"
                  "with ckpt.writer_lock(sys.argv[2], 'run'):\n print('held', flush=True); time.sleep(60)")
        holder = subprocess.Popen([sys.executable, "-c", script, str(HERE), str(tmp_path)], stdout=subprocess.PIPE,
                                  text=True)
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(errors.CheckpointError, match=f"PID {holder.pid}"):
            with ckpt.writer_lock(str(tmp_path), "run"):
                pass
        holder.kill()
        holder.wait()
        with ckpt.writer_lock(str(tmp_path), "run"):  # the kernel released it with the process
            assert (tmp_path / ".lock").read_text() == str(os.getpid())


class TestCodeRules:
    @pytest.mark.parametrize("module", PRODUCT_MODULES)
    def test_no_module_imports_a_command(self, module):
        # commands share through libraries: a command importing another is the hub nobody meant to build
        assert not (_imports(module) - {module}) & set(COMMANDS)

    @pytest.mark.parametrize("module", PRODUCT_MODULES)
    def test_every_public_function_has_a_docstring(self, module):
        tree = ast.parse((HERE / f"{module}.py").read_text())
        assert ast.get_docstring(tree), f"{module} has no module docstring"
        missing = [n.name for n in ast.walk(tree)
                   if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
                   and not ast.get_docstring(n) and n.col_offset == 0]
        assert not missing, f"{module}: no docstring on {missing}"

    def test_every_command_exists_and_no_file_is_too_long(self):
        assert set(COMMANDS) <= set(PRODUCT_MODULES)
        long = {m: n for m in PRODUCT_MODULES if (n := len((HERE / f"{m}.py").read_text().splitlines())) > 600}
        assert not long
        wide = [f"{p.name}:{n}" for p in sorted(HERE.glob("*.py"))
                for n, line in enumerate(p.read_text().splitlines(), 1) if len(line) >= 120]
        assert not wide, f"lines of 120 characters or more: {wide}"

    def test_defaults_are_defined_once_and_every_session_has_the_session_config(self):
        defined = [m for m in PRODUCT_MODULES if re.search(r"^DEFAULT_CONFIG\b", (HERE / f"{m}.py").read_text(), re.M)]
        assert defined == ["config"]
        assert {m: lines for m in PRODUCT_MODULES if (lines := _sessions_without_config(m))} == {}


class TestImportRules:
    def test_no_import_cycle_among_the_modules(self):
        import graphlib
        try:
            graphlib.TopologicalSorter(_import_graph()).prepare()
        except graphlib.CycleError as err:
            pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")

    def test_commands_never_import_commands_and_tensorflow_has_one_door(self):
        graph = _import_graph()
        assert {m: graph[m] & set(COMMANDS) for m in PRODUCT_MODULES if graph[m] & set(COMMANDS)} == {}
        assert [m for m in PRODUCT_MODULES if "tensorflow" in _imports(m)] == ["tensorflow_quiet"]

    def test_atomic_writes_and_errors_reach_no_tensorflow(self):
        graph, seen, todo = _import_graph(), set(), ["atomic_files", "errors"]
        while todo:
            module = todo.pop()
            seen.add(module)
            todo.extend(graph[module] - seen)
        assert "tensorflow_quiet" not in seen and not {"tensorflow", "ckpt"} & set().union(*map(_imports, seen))


class TestFlagHelp:
    @pytest.mark.parametrize("module", [*COMMANDS, "devices", "fair", "supernet", "data_fc2"])
    def test_every_flag_says_what_it_does(self, module, monkeypatch):
        built = []

        def catch(parser, args=None, namespace=None):
            built.append(parser)
            raise _ParserCaught

        monkeypatch.setattr(errors.ArgumentParser, "parse_args", catch)
        with pytest.raises(_ParserCaught):
            sys.modules[module].main([])
        actions = [a for a in built[0]._actions if not isinstance(a, argparse._HelpAction)]
        mute = [a.option_strings or a.dest for a in actions
                if not (a.help or "").strip() or re.fullmatch(r"[\[\]'\"\d.eE+, -]*|True|False", a.help)]
        assert actions and not mute, f"{module}: flags without a word of help: {mute}"
        if module == "train":  # each config key's flag says what the key does, then its default
            helps = {a.dest: a.help for a in actions}
            flags = [k for k, v in config.defaults().items() if not isinstance(v, dict)]
            assert sorted(config.KEY_HELP) == sorted(flags)
            assert all(helps[k].startswith(config.KEY_HELP[k]) for k in flags)


class TestLibraryParameters:
    def test_no_library_function_takes_the_argparse_namespace(self):
        """Commands unpack their flags at the call: a library function names the values it reads."""
        taking = {}
        for module in sorted(set(PRODUCT_MODULES) - set(COMMANDS)):
            tree = ast.parse((HERE / f"{module}.py").read_text())
            names = [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                     and {"args", "namespace"} & {a.arg for a in node.args.posonlyargs + node.args.args
                                                  + node.args.kwonlyargs}]
            if names:
                taking[module] = names
        assert taking == {}


class TestCommandLine:
    def test_help_and_refused_flags_come_before_tensorflow_loads_and_on_one_line(self):
        result = subprocess.run([sys.executable, "-c", _FLAGS_BEFORE_TENSORFLOW], cwd=HERE, capture_output=True,
                                text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        said = json.loads(result.stdout)
        assert said["tensorflow"] is False
        for command in COMMANDS:
            help_out, help_err = said["said"][f"{command} --help"]
            assert help_out.startswith("usage: ") and "--help" in help_out and help_err == "", command
            out, err = said["said"][f"{command} --no_such_flag"]  # a required flag may be named first
            assert out == "" and err.startswith("error: ") and err.count("\n") == 1 and "usage" not in err, command

    @pytest.mark.parametrize("command, argv, says", [
        (rank, ["--supernet", "sup", "--train", "0"], "--train needs at least 3 archs"),
        (search, ["--max_gmacs", "-1"], "--max_gmacs -1.0 must be a positive number"),
        (search, ["--max_gmacs", "nan"], "--max_gmacs nan must be a positive number"),
        (train, ["--num_epochs", "x"], "argument --num_epochs: invalid"),
    ])
    def test_a_refused_flag_is_one_line_without_the_usage_block(self, command, argv, says, capsys):
        with pytest.raises(SystemExit) as exit_info:
            command.main(argv)
        out, err = capsys.readouterr()
        assert exit_info.value.code == 2 and out == "" and err.startswith(f"error: {says}") and err.count("\n") == 1
