"""What the NPU costs for every subnet without compiling 19,683 models: the per-layer latency table
(NPU cycles of each block option beside each option of its context block, from compiles of a few
subnets through compiler.py, checked against full compiles of others), read and applied to any arch.

Vela's per-layer cycles (`--verbose-performance`) are summed by the block that decides each layer:
a convolution by its name, a residual add, resize or flow accumulation by the choice block of the
latest convolution upstream of it, layers every subnet has into `fixed_cycles`. A subnet's
predicted cycles are `fixed_cycles` plus, in every block, the cycles of its option beside the option
its context block takes: Vela's schedule of a layer depends on the layer after it (with `--optimise
Size`, H2's 7x7 kernel costs 22.2 M cycles before H2Out's 7x7 and 2.4 M before the others at
64x96), so a block's context is the next block, and the last block's the one before it.
"""
import functools
import os
import re
import tempfile
import time

import numpy as np

import atomic_files
import batches
import ckpt
import convert
import supernet
from errors import ExportError

TABLE_FORMAT = "edgeflownas-ethos-u-latency-table/2"
FIXED = "fixed"  # the table key of the layers every subnet has


def table_archs():
    """The subnets a table is built from: every pair (p, q) of options, p in the even blocks and q in
    the odd ones (all-0, all-1, ... first). Every block then meets every option of its context block
    with every option of its own, the smallest design that does (9 subnets for 3 options)."""
    count = max(supernet.SPACE.num_options)
    pairs = [(p, p) for p in range(count)] + [(p, q) for p in range(count) for q in range(count) if p != q]
    return [tuple(min(q if i % 2 else p, n - 1) for i, n in enumerate(supernet.SPACE.num_options)) for p, q in pairs]


def context_blocks():
    """{block: its context block}: the next choice block, the last block's the one before it."""
    blocks = supernet.SPACE.blocks
    return {b: blocks[i + 1] if i + 1 < len(blocks) else blocks[i - 1] for i, b in enumerate(blocks)}


def conv_block(name):
    """The choice block a conv op or TFLite tensor name belongs to ("EB0_rb2_conv1" -> EB0,
    "H1_k5_conv" -> H1), FIXED for the layers every subnet has (E0, Down1, Up2, ...), None if not a conv."""
    match = re.search(r"([A-Za-z0-9]+)_(?:rb\d+_conv\d|k\d+_conv|conv)", name.rsplit("/", 1)[-1])
    if not match:
        return None
    return match.group(1) if match.group(1) in supernet.SPACE.blocks else FIXED


def op_blocks(graph):
    """{op name: block} for a static graph: the block of the latest-built convolution upstream of each op.

    A residual add or a resize is thus charged to the block that decides the layer it reads (the
    resize after DB0 to DB0, the flow accumulations to H1Out and H2Out), the same block in every subnet.
    """
    latest = {}
    for index, op in enumerate(graph.get_operations()):  # creation order is topological
        if op.type == "Conv2D":
            latest[op.name] = (index, op.name)
        else:
            upstream = [latest[t.op.name] for t in op.inputs if t.op.name in latest]
            if upstream:
                latest[op.name] = max(upstream)
    return {name: conv_block(conv) for name, (_, conv) in latest.items()}


@functools.lru_cache(maxsize=None)
def arch_op_blocks(arch):
    """op_blocks of `arch`'s static graph, built at 16 x 16: its op names do not depend on the input size."""
    return op_blocks(convert.build_static_graph(arch, 16, 16)[0])


def block_cycles(per_layer, blocks_of_ops):
    """Per-layer cycles summed by block: ({FIXED or block: cycles}, unattributed rows). A row is
    named by its TFLite tensors ("supernet/Relu_3;supernet/add"): the first one that is an op of the
    static graph, else the first conv name in it, gives its block; an unknown row counts as FIXED."""
    totals, unattributed = {FIXED: 0.0, **{b: 0.0 for b in supernet.SPACE.blocks}}, 0
    for row in per_layer:
        tokens = [t.strip() for t in row["Name"].split(";")]
        known = [blocks_of_ops[t] for t in tokens if blocks_of_ops.get(t)]
        named = [conv_block(t) for t in tokens if conv_block(t)]
        block = (known + named + [None])[0]
        unattributed += block is None
        totals[block or FIXED] += float(row["Op Cycles"])
    return totals, unattributed


def make_latency_table(measurements, target, h, w):
    """The table from compiled subnets in which every block meets every option of its context block
    with each of its own (table_archs): fixed cycles averaged over them, each (block, option, context
    option) the mean over the subnets that chose that pair."""
    table = {"format": TABLE_FORMAT, "space_version": supernet.SPACE.version,
             **{k: getattr(target, k) for k in ("accelerator_config", "system_config", "memory_mode", "optimise")},
             "clock_hz": measurements[0]["summary"]["clock_hz"], "input_size": [h, w],
             "source_archs": [supernet.format_arch(m["arch"]) for m in measurements],
             "fixed_cycles": float(np.mean([m["cycles"][FIXED] for m in measurements])),
             "context_blocks": context_blocks(), "block_cycles": {},
             "unattributed_rows": int(sum(m["unattributed"] for m in measurements))}
    index = {b: i for i, b in enumerate(supernet.SPACE.blocks)}
    for block, context in table["context_blocks"].items():
        i, j = index[block], index[context]
        cells = [[[m["cycles"][block] for m in measurements if (m["arch"][i], m["arch"][j]) == (o, c)]
                  for c in range(supernet.SPACE.num_options[j])] for o in range(supernet.SPACE.num_options[i])]
        if not all(all(row) for row in cells):
            raise ExportError(f"the table's subnets never choose every option of {block} beside every one of "
                              f"{context}")
        table["block_cycles"][block] = [[float(np.mean(c)) for c in row] for row in cells]
    return table


def load_latency_table(path):
    """Read and check a latency table written by `export.py --latency_table`; ExportError naming the
    file and field, or the search space version it was made for if it is not this code's.

    JSON: format, space_version, accelerator_config, system_config, memory_mode, clock_hz,
    input_size [h, w], fixed_cycles, context_blocks {block: its context block}, block_cycles {block:
    [[cycles of each option beside each option of its context block]]}, and the check against full
    compiles.
    """
    table = ckpt.read_json(path, "latency table")
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        raise ExportError(f"latency table {path} is not a {TABLE_FORMAT} file "
                          "(an older table: build it again with export.py --latency_table)")
    if table.get("space_version") != supernet.SPACE.version:
        raise ExportError(f"latency table {path} was made for search space {table.get('space_version')}, "
                          f"this code has {supernet.SPACE.version}")
    problems = [k for k in ("accelerator_config", "system_config", "memory_mode") if not isinstance(table.get(k), str)]
    problems += [k for k in ("clock_hz", "fixed_cycles") if not is_number(table.get(k)) or table[k] < 0]
    if not problems and table["clock_hz"] <= 0:
        problems.append("clock_hz")
    size = table.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        problems.append("input_size")
    if table.get("context_blocks") != context_blocks():
        problems.append("context_blocks")
    cycles, counts = table.get("block_cycles"), dict(zip(supernet.SPACE.blocks, supernet.SPACE.num_options))
    for block, context in context_blocks().items():
        rows = cycles.get(block) if isinstance(cycles, dict) else None
        valid = isinstance(rows, list) and len(rows) == counts[block] and all(
            isinstance(row, list) and len(row) == counts[context] for row in rows)
        if not (valid and all(is_number(c) and c >= 0 for row in rows for c in row)):
            problems.append(f"block_cycles.{block}")
    if not problems and predict_cycles(table, supernet.uniform_arch(0)) <= 0:
        problems.append("fixed_cycles (every subnet would take 0 cycles)")
    if problems:
        raise ExportError(f"latency table {path}: field {problems[0]} missing or invalid")
    return table


def is_number(value):
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def predict_cycles(table, arch):
    """Predicted NPU cycles of one inference of `arch` from a latency table."""
    option = dict(zip(supernet.SPACE.blocks, supernet.validate_arch(arch)))
    return table["fixed_cycles"] + sum(table["block_cycles"][b][option[b]][option[c]]
                                       for b, c in table["context_blocks"].items())


def predict_fps(table, arch):
    """Predicted NPU inferences per second of `arch` from a latency table."""
    return table["clock_hz"] / predict_cycles(table, arch)


def check_table(table, measurements):
    """Predicted against the compiler's FPS for fully compiled subnets: rows and the median/max abs error (%)."""
    rows = []
    for m in measurements:
        predicted = predict_fps(table, m["arch"])
        rows.append({"arch": supernet.format_arch(m["arch"]), "compiled_fps": m["summary"]["fps"],
                     "predicted_fps": predicted, "error_pct": 100.0 * (predicted / m["summary"]["fps"] - 1.0)})
    errors = np.abs([r["error_pct"] for r in rows])
    return {"archs": rows, "median_abs_error_pct": float(np.median(errors)), "max_abs_error_pct": float(errors.max())}


def figures(arch, size, target, cache, int8_model, work_dir):
    """The compiler's figures of `arch` at `size` for `target`: dict(arch, size, summary, cycles
    by block, unattributed rows). From the cache's entry for the structure when there is one, else
    int8_model() (a path) is compiled through the cache (compiler.CompileCache) in work_dir."""
    entry = cache.structure(supernet.structure(arch, size), target)
    if entry is None:
        name = "m" + supernet.format_arch(arch).replace(",", "") + f"_{size[0]}x{size[1]}"
        summary, per_layer = cache.compile(int8_model(), target, os.path.join(work_dir, name),
                                           supernet.structure(arch, size))
    else:
        summary, per_layer = entry["summary"], entry["per_layer"]
    cycles, unattributed = block_cycles(per_layer, arch_op_blocks(tuple(arch)))
    return {"arch": arch, "size": list(size), "summary": summary, "cycles": cycles, "unattributed": unattributed}


def size_costs(size, target, figures_of):
    """What the NPU costs at `size` for every subnet, from the figures of the table's subnets
    (table_archs, figures_of(arch)): the latency table; `sram_kib`, the SRAM of all-k for k = 0, 1,
    ... made non-decreasing (the SRAM a subnet needs is set by the input size, and with optimise Performance
    a little by its full-resolution head kernels: all-k, which takes option k or more in every
    block, bounds every subnet whose largest option is k; check_costs measures how safely); the
    flash model (an intercept plus a cost per parameter: weights are nearly all of it, compressed
    alike); and the operators the NPU leaves to the CPU (resizes that are not an exact 2x)."""
    records = [figures_of(arch) for arch in table_archs()]
    by_arch = {tuple(r["arch"]): r for r in records}
    uniform = [by_arch[supernet.uniform_arch(k)] for k in range(max(supernet.SPACE.num_options))]
    params = [supernet.count_params(r["arch"]) for r in records]
    flash = [r["summary"]["off_chip_flash_used_kib"] for r in records]
    per_param, intercept = np.polyfit(params, flash, 1)
    worst = max(records, key=lambda r: r["summary"]["cpu_operators"])["summary"]
    return {"size": list(size), "latency_table": make_latency_table(records, target, *size),
            "sram_kib": [float(v) for v in np.maximum.accumulate([r["summary"]["sram_used_kib"] for r in uniform])],
            "flash": {"intercept_kib": float(intercept), "kib_per_param": float(per_param)},
            "cpu_operators": worst["cpu_operators"], "cpu_operator_names": worst["cpu_operator_names"]}


def predict(costs, arch):
    """{sram_kib, flash_kib, fps, cycles, npu_figures: "table"} of `arch` at the size of `costs` (size_costs)."""
    flash = costs["flash"]["intercept_kib"] + costs["flash"]["kib_per_param"] * supernet.count_params(arch)
    cycles = predict_cycles(costs["latency_table"], arch)
    return {"sram_kib": costs["sram_kib"][max(arch)], "flash_kib": float(flash), "cycles": float(cycles),
            "fps": costs["latency_table"]["clock_hz"] / cycles, "npu_figures": "table"}


def compiled(summary):
    """The figures `predict` gives, from a full compile's summary instead: {..., npu_figures: "compile"}."""
    return {"sram_kib": summary["sram_used_kib"], "flash_kib": summary["off_chip_flash_used_kib"],
            "cycles": summary["cycles_total"], "fps": summary["fps"], "npu_figures": "compile"}


def check_costs(costs_by_size, measured):
    """The predictions of size_costs against full compiles (figures records of other archs and
    sizes): rows and the largest error of each figure; `sram_under_kib` is the largest amount a
    prediction fell short of a compile (0 when every prediction is safe)."""
    rows = []
    for record in measured:
        got, size = record["summary"], tuple(record["size"])
        predicted = predict(costs_by_size[size], record["arch"])
        rows.append({"arch": supernet.format_arch(record["arch"]), "size": list(size),
                     "sram_kib": got["sram_used_kib"], "predicted_sram_kib": predicted["sram_kib"],
                     "flash_kib": got["off_chip_flash_used_kib"], "predicted_flash_kib": predicted["flash_kib"],
                     "cycles": got["cycles_total"], "predicted_cycles": predicted["cycles"]})
    return {"pairs": rows,
            "sram_max_error_kib": max(abs(r["predicted_sram_kib"] - r["sram_kib"]) for r in rows),
            "sram_under_kib": max(max(r["sram_kib"] - r["predicted_sram_kib"], 0.0) for r in rows),
            "flash_max_error_kib": max(abs(r["predicted_flash_kib"] - r["flash_kib"]) for r in rows),
            "cycles_max_error_pct": max(abs(r["predicted_cycles"] / r["cycles"] - 1) * 100 for r in rows)}


def build_latency_table(run_dir, kind, cfg, size, target, cache, check, calibration_samples):
    """The per-layer latency table of the run at `size` (from all-0, all-1, ... compiled through
    `cache`), checked against check = (count, seed) random subnets compiled in full; INT8 models
    are the run's weights, BN recalibrated per subnet at the run's size, calibrated on the first
    `calibration_samples` training crops. Returns the table."""
    data = batches.deployment_batches(batches.deployment_base(cfg, calibration_samples), size, recal_at_size=False)
    check_archs = supernet.random_archs(*check)
    with tempfile.TemporaryDirectory() as work, \
            convert.recalibration_session(run_dir, kind, cfg, data["recal"]) as recalibrate:
        def int8_model(arch):
            int8 = convert.static_models(lambda names: recalibrate(arch, names)[1], arch, *size, data["calibration"],
                                         [], with_fp32=False)["int8"]
            name = "m" + supernet.format_arch(arch).replace(",", "") + ".tflite"
            return atomic_files.write_atomic(os.path.join(work, name), int8)

        def measure(arch):
            start = time.time()
            record = figures(arch, size, target, cache, lambda: int8_model(arch), work)
            print(f"  {supernet.format_arch(arch)}  {record['summary']['fps']:.2f} FPS "
                  f"({record['summary']['cycles_total']:.0f} cycles)  {time.time() - start:.1f}s", flush=True)
            return record

        print(f"table from {', '.join(supernet.format_arch(a) for a in table_archs())}:")
        table = make_latency_table([measure(a) for a in table_archs()], target, *size)
        print(f"check against {len(check_archs)} random subnets (seed {check[1]}) compiled in full:")
        table["check"] = dict(check_table(table, [measure(a) for a in check_archs]), seed=check[1])
    table.update(run_dir=run_dir, checkpoint=recalibrate.meta["prefix"], data_source=data["data_source"],
                 compiler_version=cache.version, weights="the run's checkpoint, BN recalibrated per subnet")
    return table
