"""Whether runs trained alone have stopped falling (the capacity study's criterion), and how far the
ranking's Kendall tau-b could move if the runs still falling had gone on improving."""
import itertools
import math
import os

import numpy as np
from scipy import stats

# A run's EPE has stopped falling when its best EPE improved by less than these percentages of the
# zero-flow EPE over its last two evaluations and at its last.
LAST_TWO_PCT, LAST_PCT = 2.0, 0.5
MAX_ORDERS_BOUNDED = 20000  # tau_range_if_improved tries every order: about (archs + 1)^falling x falling!


def figures(history, zero_flow):
    """How much a run's best EPE improved over its last two evaluations and at its last, in % of the
    zero-flow EPE, and whether both are below the criterion; the figures are None with fewer than 3
    evaluations. history: {epoch: EPE} (ranking.read_history)."""
    best = np.minimum.accumulate([history[e] for e in sorted(history)])
    if len(best) < 3:
        return {"evaluations": len(best), "last_two_pct": None, "last_pct": None, "stopped": None}
    last_two, last = (100.0 * (best[-k] - best[-1]) / zero_flow for k in (3, 2))
    return {"evaluations": len(best), "last_two_pct": float(last_two), "last_pct": float(last),
            "stopped": bool(last_two < LAST_TWO_PCT and last < LAST_PCT)}


def summary(histories, zero_flow):
    """Which runs had stopped falling by the criterion (figures), for the report: histories
    {run_dir: {epoch: EPE}}; a run with fewer than 3 evaluations counts in neither list."""
    runs = {run: figures(history, zero_flow) for run, history in histories.items()}
    return {"criterion_pct": {"last_two": LAST_TWO_PCT, "last": LAST_PCT}, "runs": runs,
            "stopped": sorted(run for run, f in runs.items() if f["stopped"] is True),
            "still_falling": sorted(run for run, f in runs.items() if f["stopped"] is False)}


def tau_range_if_improved(rows, still_falling):
    """The lowest and highest Kendall tau-b of the supernet's order against the standalone order if
    the ranked runs still falling (rows' "run" in `still_falling`) had ended anywhere better than they
    did, the others where they are: {"archs", "kendall_tau_b": [low, high]}; None when no ranked run
    is still falling, or when there are more orders than MAX_ORDERS_BOUNDED. Every order reachable
    that way is tried: each falling run in its own gap between the others or in any gap ahead of it,
    in every order among the falling runs that share a gap. Exact when no two EPEs tie (measured
    ones do not); with ties, falling runs are never tied with another run, so the range may differ."""
    falling = [i for i, r in enumerate(rows) if r["run"] in still_falling]
    if not falling or (len(rows) + 1) ** len(falling) * math.factorial(len(falling)) > MAX_ORDERS_BOUNDED:
        return None
    sup = [r["supernet_epe"] for r in rows]
    place = stats.rankdata([r["standalone_epe"] for r in rows]) * 2
    others = [place[j] for j in range(len(rows)) if j not in falling]
    gaps = sorted({p - 1 for p in others}) + [max(place) + 1]  # just above each other run, and last
    reachable = [[g for g in gaps if g <= min(h for h in gaps if h > place[i])] for i in falling]
    taus = [stats.kendalltau(sup, place).statistic]  # as measured (a tie with a run ahead included)
    for moved in itertools.product(*reachable):
        for order in itertools.permutations(range(len(falling))):  # their order where they share a gap
            values = place.copy()
            values[falling] = np.array(moved) - np.array(order) / len(falling)
            taus.append(stats.kendalltau(sup, values).statistic)
    return {"archs": [rows[i]["arch"] for i in falling], "kendall_tau_b": [float(min(taus)), float(max(taus))]}


def lines(result):
    """How many runs met the criterion, naming those still falling, and the tau-b they could move."""
    runs, falling = result["runs"], result["still_falling"]
    line = (f"stopping criterion (best EPE improved < {result['criterion_pct']['last_two']:g}% / "
            f"{result['criterion_pct']['last']:g}% of zero flow over the last two evaluations / the last): "
            f"{len(result['stopped'])} of {len(runs)} standalone runs stopped")
    if falling:
        line += "; still falling: " + ", ".join(
            f"{os.path.basename(run)} ({runs[run]['last_two_pct']:.2f}% / {runs[run]['last_pct']:.2f}%)"
            for run in falling)
    too_few = len(runs) - len(result["stopped"]) - len(falling)
    out = [line + (f"; {too_few} with fewer than 3 evaluations" if too_few else "")]
    bound = result.get("tau_if_improved")
    if bound:
        low, high = bound["kendall_tau_b"]
        out.append(f"had {', '.join(bound['archs'])} (still falling) ended anywhere better: "
                   f"Kendall tau-b {low:.3f} .. {high:.3f}")
    return out
