"""The choice within the noise: of members scored on the same validation pairs, the cheapest (or
fastest) whose EPE cannot be told from the lowest-EPE member's (within Z paired standard errors of
it), named beside the lowest-EPE member; or, with the rule `lowest_epe`, the lowest-EPE member.

A difference the validation pairs cannot resolve is no reason to pay for a slower network: 20 pairs
of real photographs gave paired SEs of 0.22 EPE. Where the noise covers most of the members, the
choice rests on cost alone, and the summary says so with how many pairs would separate the two.
"""
import dataclasses
import math

import metrics

COVERED_SHARE = 0.5  # more than this share of the members within the noise: the noise covers the front
UNITS = {"fps": lambda v: f"{v:.1f} FPS", "gmacs": lambda v: f"{v:.3f} GMAC",
         "params": lambda v: f"{v / 1e6:.2f} M params"}


@dataclasses.dataclass
class Choice:
    """What the rule chose among `rows`: indices into them, each row's paired SE against the
    lowest-EPE row and whether it lies within the noise of it."""

    rows: list
    epe: str  # the key of the EPE compared
    cost: str  # the key of the cost: lower is better, or higher with `maximise`
    maximise: bool
    rule: str
    z: float
    pairs: int  # validation pairs the EPEs are over
    lowest: int
    cheapest_within: int  # the cheapest (fastest) row within the noise of the lowest
    ses: list
    within: list

    @property
    def chosen(self):
        """The index the rule picks."""
        return self.lowest if self.rule == "lowest_epe" else self.cheapest_within

    @property
    def covers_front(self):
        """Whether more than half the members lie within the noise of the lowest (it among them)."""
        return len(self.rows) > 1 and sum(self.within) > COVERED_SHARE * len(self.rows)

    def pairs_to_separate(self, index):
        """About how many validation pairs would tell row `index` from the lowest: paired SE scales as
        1/sqrt(n), so a difference D with SE s over n pairs reaches Z SE at n * (Z * s / D)^2 pairs,
        if the difference and the per-pair spread held. None for the lowest itself, an unknown SE or
        no difference."""
        diff, se = self.rows[index][self.epe] - self.rows[self.lowest][self.epe], self.ses[index]
        if index == self.lowest or se is None or diff <= 0:
            return None
        return math.ceil(self.pairs * (self.z * se / diff) ** 2)


def choose(rows, samples, pixels, rule, z, epe="epe", cost="gmacs", maximise=False):
    """The Choice among `rows` (dicts with `epe` and `cost`); samples[i]: row i's per-sample EPE sums
    over the validation pairs (None where not recorded), pixels: each pair's valid pixels. Ties in
    EPE go to the cheaper row, ties in cost to the lower EPE, then to the earlier row."""
    sign = -1 if maximise else 1
    order = range(len(rows))
    lowest = min(order, key=lambda i: (rows[i][epe], sign * rows[i][cost], i))
    ses = [None if samples[i] is None or samples[lowest] is None
           else metrics.paired_se(samples[i], samples[lowest], pixels) for i in order]
    within = [bool(i == lowest or (ses[i] is not None and rows[i][epe] - rows[lowest][epe] <= z * ses[i]))
              for i in order]
    cheapest = min((i for i in order if within[i]), key=lambda i: (sign * rows[i][cost], rows[i][epe], i))
    pairs = 0 if samples[lowest] is None else len(samples[lowest])
    return Choice(rows, epe, cost, maximise, rule, z, pairs, lowest, cheapest, ses, within)


def summary(choice, label):
    """The choice as a report stores it; label(row) names a member."""
    rows, chosen, lowest = choice.rows, choice.chosen, choice.lowest

    def member(i):
        return {"member": label(rows[i]), choice.epe: rows[i][choice.epe], choice.cost: rows[i][choice.cost],
                "paired_se": choice.ses[i]}

    return {"rule": choice.rule, "noise_se": choice.z, "cost": choice.cost, "validation_pairs": choice.pairs,
            "chosen": member(chosen), "lowest_epe": member(lowest),
            "best_cost_within_noise": member(choice.cheapest_within),
            "epe_difference": rows[chosen][choice.epe] - rows[lowest][choice.epe],
            "members": len(rows), "within_noise": sum(choice.within), "noise_covers_front": choice.covers_front,
            "pairs_to_separate": choice.pairs_to_separate(choice.cheapest_within), "lines": lines(choice, label)}


def lines(choice, label):
    """What a user reads of the choice: the rule and its pick, the lowest-EPE member beside it, and
    whether the noise covers the members (with the pairs that would separate the two)."""
    rows, chosen, lowest, word = choice.rows, choice.chosen, choice.lowest, _cheapest_word(choice)
    epe_name = "INT8 EPE" if choice.epe == "epe_int8" else "EPE"
    count = f"{sum(choice.within)} of the {len(rows)} members"
    rule = (f"the {word} of the {sum(choice.within)} members (of {len(rows)}) within {choice.z:g} paired SE of "
            f"the lowest {epe_name}"
            if choice.rule == "within_noise" else "the lowest " + epe_name)
    out = [f"choice ({choice.rule}): {_figures(choice, chosen, label)}: {rule}",
           f"lowest {epe_name}: {_figures(choice, lowest, label)}"]
    if chosen != lowest:
        out[-1] += (f"; the choice is {rows[chosen][choice.epe] - rows[lowest][choice.epe]:+.4f} from it "
                    f"(paired SE {choice.ses[chosen]:.4f})")
    elif not any(se is not None for i, se in enumerate(choice.ses) if i != lowest) and len(rows) > 1:
        out.append("no per-pair EPEs recorded for these members: the noise between them is unknown")
    elif choice.cheapest_within == lowest:
        out.append(f"the lowest-EPE member is also the {word} within the noise")
    else:
        out.append(f"the {word} within the noise ({choice.z:g} paired SE) would be "
                   f"{_figures(choice, choice.cheapest_within, label)} (choice rule within_noise)")
    if choice.covers_front:
        out.append(_covered(choice, label, count))
    return out


def _covered(choice, label, count):
    """The line saying the noise covers most members, with the pairs that would separate the two
    rules' picks (the lowest-EPE member and the cheapest within the noise) where they differ."""
    text = (f"the noise covers {count}: their {choice.pairs} validation pairs cannot tell them apart, so "
            + (f"the choice rests on {choice.cost} alone" if choice.rule == "within_noise"
               else "the lowest EPE among them may be the pairs' luck"))
    needed = choice.pairs_to_separate(choice.cheapest_within)
    if needed is not None:
        text += (f"; about {needed:,} pairs would separate {label(choice.rows[choice.cheapest_within])} from "
                 f"{label(choice.rows[choice.lowest])} (n * (Z * SE / difference)^2, if both held)")
    return text


def _figures(choice, index, label):
    row = choice.rows[index]
    name = "INT8 EPE" if choice.epe == "epe_int8" else "EPE"
    return f"{label(row)} ({name} {row[choice.epe]:.4f}, {UNITS[choice.cost](row[choice.cost])})"


def _cheapest_word(choice):
    return "fastest" if choice.maximise else "cheapest"
