"""Choosing among scored subnets: the table of every subnet's metrics and costs, the Pareto fronts
of EPE against cost, the choice within a budget (noise_choice: the cheapest within the noise of the
lowest EPE, or the lowest), and the picture of it all."""
import csv
import io
import os

import atomic_files
import edge_tables
import metrics
import noise_choice
import runs
import supernet


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


def table_rows(scores, h, w, latency_table=None):
    """One row per subnet of {arch index: metrics}: arch code, metrics, params, GMACs at h x w (and
    the NPU FPS a latency table predicts), sorted by EPE."""
    rows = []
    for index, m in scores.items():
        arch = supernet.index_to_arch(index)
        row = {"arch": supernet.format_arch(arch), **{k: m[k] for k in metrics.NAMES},
               "params": supernet.count_params(arch, h, w), "gmacs": supernet.count_macs(arch, h, w) / 1e9}
        if latency_table is not None:
            row["fps"] = edge_tables.predict_fps(latency_table, arch)
        rows.append((row["epe"], index, row))
    return [row for _, _, row in sorted(rows, key=lambda r: r[:2])]


def write_scores_csv(path, rows):
    """scores.csv, written atomically; floats in their shortest exact form, so equal runs give equal bytes."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_files.write_atomic(path, text.getvalue())


def with_noise(front, samples, pixels):
    """Copies of a front's rows, each with `epe_se`: the paired standard error over the validation
    samples of its EPE minus the front's lowest-EPE member's (metrics.paired_se; None where a
    subnet's per-sample sums were not recorded). samples: {arch code: per-sample EPE sums}."""
    best = min(front, key=lambda r: r["epe"])["arch"]
    return [dict(row, epe_se=_paired(samples, row["arch"], best, pixels)) for row in front]


def _paired(samples, arch, other, pixels):
    a, b = samples.get(arch), samples.get(other)
    return None if a is None or b is None else metrics.paired_se(a, b, pixels)


def budget_limits(*, max_gmacs, max_params, min_fps):
    """[(column, limit, sign)] of the budget flags given (None: not given): sign 1 for at most, -1 for at least."""
    limits = [("gmacs", max_gmacs, 1), ("params", max_params, 1), ("fps", min_fps, -1)]
    return [(key, value, sign) for key, value, sign in limits if value is not None]


def within_budget(rows, limits):
    """The rows within the budget `limits` (budget_limits), in their order."""
    return [r for r in rows if all(sign * r[key] <= sign * value for key, value, sign in limits)]


def budget_choice(rows, limits, samples_of, pixels, rule, z):
    """The noise_choice.Choice within the budget `limits` (budget_limits), or None without a budget or a
    subnet within it: among the Pareto front of the subnets within the budget on the budget's own cost
    (its first limit's column: the cheapest, or with a minimum FPS the fastest, within `z` paired SE
    of the lowest EPE; samples_of(codes) gives their per-sample EPE sums)."""
    within = within_budget(rows, limits)
    if not (limits and within):
        return None
    cost, maximise = limits[0][0], limits[0][2] < 0
    front = pareto_front(within, cost, maximise)
    samples = samples_of([r["arch"] for r in front])
    return noise_choice.choose(front, [samples.get(r["arch"]) for r in front], pixels, rule, z, cost=cost,
                               maximise=maximise)


def budget_wording(limits):
    """The budget as words: "gmacs <= 1, fps >= 30"."""
    return ", ".join(f"{key} {'<=' if sign > 0 else '>='} {value:g}" for key, value, sign in limits)


def budget_report(made, limits):
    """What pareto.json keeps of a budget's choice (noise_choice.summary), or None without one."""
    return None if made is None else dict(noise_choice.summary(made, _code), budget=budget_wording(limits))


def budget_lines(made, limits, fronts):
    """Lines naming the budget's choice and its lowest-EPE subnet (noise_choice.lines), the other
    front members within the budget it cannot be told from, and the choice's EPE/GMACs front neighbours."""
    if not limits:
        return []
    if made is None:
        return [f"no scored subnet within the budget ({budget_wording(limits)})"]
    lines = [f"within the budget ({budget_wording(limits)}): {len(made.rows)} subnets on its EPE/{made.cost} front"]
    lines += noise_choice.lines(made, _code)
    lowest = made.rows[made.lowest]
    for i, row in enumerate(made.rows):
        if made.within[i] and i not in (made.chosen, made.lowest):
            lines.append(f"  within the noise ({row['epe'] - lowest['epe']:+.4f} EPE, paired SE {made.ses[i]:.4f}): "
                         f"{describe(row)}")
    chosen, front = made.rows[made.chosen], fronts["epe_gmacs"]
    cheaper = [r for r in front if r["gmacs"] < chosen["gmacs"]][-1:]
    dearer = [r for r in front if r["gmacs"] > chosen["gmacs"]][:1]
    for label, group in (("cheaper", cheaper), ("dearer", dearer)):
        lines += [f"  front neighbour, {label}: {describe(r)}" for r in group]
    return lines


def budget_marks(made):
    """The budget's choice and its lowest-EPE subnet as pareto.png marks them: {label: (rows, style)}."""
    if made is None:
        return {}
    chosen, lowest = made.rows[made.chosen], made.rows[made.lowest]
    if chosen is lowest:
        return {f"budget choice = lowest EPE ({made.rule}): {chosen['arch']}": ([chosen], "*")}
    return {f"budget choice ({made.rule}, {made.z:g} SE): {chosen['arch']}": ([chosen], "*"),
            f"lowest EPE in budget: {lowest['arch']}": ([lowest], "X")}


def _code(row):
    return row["arch"]


def describe(row):
    """One subnet's row as a line: code, EPE, GMACs, parameters (and FPS)."""
    fps = f", {row['fps']:.1f} FPS" if "fps" in row else ""
    noise = f" (paired SE {row['epe_se']:.4f})" if row.get("epe_se") else ""
    return (f"{row['arch']}  EPE {row['epe']:.4f}{noise}, {row['gmacs']:.3f} GMAC, {row['params'] / 1e6:.2f} M "
            f"params{fps}")


def plot_front(path, rows, fronts, marked, title, z):
    """pareto.png: EPE against GMACs for every subnet, the front as a line with its noise (`z` paired
    SE), marked subnets labelled; a second panel against the NPU's FPS when the rows have it."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    panels = [("gmacs", "GMACs per image pair", "epe_gmacs")]
    if "fps" in rows[0]:
        panels.append(("fps", "NPU FPS (latency table)", "epe_fps"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.5), squeeze=False)
    for ax, (cost, label, front_key) in zip(axes[0], panels):
        ax.scatter([r[cost] for r in rows], [r["epe"] for r in rows], s=3, c="0.6", alpha=0.5, lw=0,
                   label=f"{len(rows):,} subnets")
        front = fronts[front_key]
        ax.plot([r[cost] for r in front], [r["epe"] for r in front], "-o", c="tab:red", ms=3, lw=1.2,
                label=f"Pareto front ({len(front)})")
        if all(r.get("epe_se") is not None for r in front):
            ax.fill_between([r[cost] for r in front], [r["epe"] for r in front],
                            [r["epe"] + z * r["epe_se"] for r in front], step="post", color="tab:red",
                            alpha=0.15, lw=0, label=f"front + {z:g} paired SE: not told apart")
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
    path = runs.pool_path(run_dir, cfg)
    if os.path.exists(path):
        pool = [by_code[c] for c in map(supernet.format_arch, runs.read_pool(path)) if c in by_code]
        if pool:
            marked["eval pool"] = (pool, "o")
    largest = max(supernet.SPACE.num_options) - 1
    for label, option, style in (("all-0", 0, "s"), (f"all-{largest}", largest, "D")):
        code = supernet.format_arch(supernet.uniform_arch(option))
        if code in by_code:
            marked[label] = ([by_code[code]], style)
    return marked
