"""FairNAS strict fairness: the fair-cycle sampler, fairness counts and gap, and the eval pool.

A fair cycle draws, for each block, a random permutation of the options; path p takes element p
of every block's permutation, so the 3 paths of a cycle use every option of every block exactly
once. The random stream of cycle `step` is derived from (seed, step) alone, so a resumed run draws
exactly the paths an uninterrupted one would.

    python fair.py --cycles 300 --seed 42 --check
    python fair.py --pool --seed 42 --size 12 --check
"""
import functools
import hashlib
import itertools
import json
import sys

import numpy as np

import supernet
from errors import ArchError, ArgumentParser, ConfigError
from supernet import arch_to_index, count_macs, format_arch, index_to_arch

POOL_ANCHORS = 8  # the pool builder tries this many subnets, seeded, among the 4x as many nearest its target
POOL_STREAM = 2 ** 32  # keeps the pool's random stream apart from every training step's


def paths_per_cycle():
    """The number of paths of a fair cycle: the options of every block, which must be equal."""
    counts = set(supernet.SPACE.num_options)
    if len(counts) != 1:
        raise ArchError(f"strict fairness needs the same number of options in every block, the search space has "
                        f"{supernet.SPACE.num_options}")
    return counts.pop()


def _cycle(rng):
    """One fair cycle drawn from `rng`: per block a permutation, path p takes element p."""
    paths = paths_per_cycle()
    perms = [rng.permutation(paths) for _ in supernet.SPACE.blocks]
    return tuple(tuple(int(perm[path]) for perm in perms) for path in range(paths))


def fair_cycle(seed, step):
    """The 3 archs of fair cycle `step` (a tuple of 3 tuples of 9 ints), a function of (seed, step) alone."""
    return _cycle(np.random.default_rng([seed, step]))


def empty_counts():
    """Fairness counts {block: {option: 0}}; option keys are strings so JSON round-trips them."""
    space = supernet.SPACE
    return {block: {str(o): 0 for o in range(n)} for block, n in zip(space.blocks, space.num_options)}


def add_counts(counts, archs):
    """Return a copy of `counts` with every (block, option) of `archs` counted once more."""
    counts = {block: dict(options) for block, options in counts.items()}
    for arch in archs:
        for block, option in zip(supernet.SPACE.blocks, arch):
            counts[block][str(option)] += 1
    return counts


def fairness_gap(counts):
    """Max over blocks of (max - min) option count; 0 after every whole fair step."""
    return max(max(options.values()) - min(options.values()) for options in counts.values())


def counts_for_steps(seed, first_step, num_steps, counts=None):
    """Fairness counts after sampling cycles first_step .. first_step+num_steps-1 onto `counts`."""
    counts = counts or empty_counts()
    for step in range(first_step, first_step + num_steps):
        counts = add_counts(counts, fair_cycle(seed, step))
    return counts


def chain_digest(digest, cycle):
    """Extend a running digest of the path sequence by one cycle; resumable, unlike one hash of all."""
    text = digest + "|" + ";".join(format_arch(a) for a in cycle)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sequence_digest(seed, first_step, num_steps, digest=""):
    """The running digest after cycles first_step .. first_step+num_steps-1, to compare two runs."""
    for step in range(first_step, first_step + num_steps):
        digest = chain_digest(digest, fair_cycle(seed, step))
    return digest


# ----------------------------------------------------------------------------- eval pool

def _largest_gap(values):
    """Largest difference between neighbouring sorted values (0 for fewer than two)."""
    return float(np.diff(np.sort(values)).max()) if len(values) > 1 else 0.0


def _completions(arch):
    """Every fair cycle whose first path is `arch`: per block the other two options in either order."""
    rest = [[o for o in range(count) if o != option] for option, count in zip(arch, supernet.SPACE.num_options)]
    for orders in itertools.product(*(itertools.permutations(r) for r in rest)):
        yield (arch,) + tuple(tuple(order[p] for order in orders) for p in range(len(rest[0])))


@functools.lru_cache(maxsize=4)
def _every_macs(h, w):
    """MACs of every subnet at h x w, by arch index (read-only: computed once per size and process)."""
    macs = np.array([count_macs(index_to_arch(i), h, w) for i in range(supernet.SPACE.num_archs)], np.float64)
    macs.flags.writeable = False
    return macs


# The largest pool a new run may ask for. Every evaluation scores each member (about 5 s each at 180x240,
# batch 32, on a 2-core CPU): 300 are 25 minutes an evaluation, and building a pool grows faster than its
# size (900 took 55 s); ranking more subnets than that is the search's work.
MAX_POOL_SIZE = 300


def build_eval_pool(size, seed, h=180, w=240):
    """A fixed pool of `size` subnets made of whole fair cycles.

    The first cycle is all-0 / all-1 / all-2 (the extremes). Each further cycle aims at the
    middle of the largest MACs gap left so far: a few unused subnets near that target, picked
    seeded, are each completed into every fair cycle they head (2^9 each), and the cycle that
    leaves the smallest largest gap (then the smallest sum of squared gaps) joins the pool.
    """
    paths = paths_per_cycle()
    if size <= 0 or size % paths:
        raise ConfigError(f"eval pool size {size} must be a positive multiple of {paths} (whole fair cycles)")
    rng = np.random.default_rng([seed, POOL_STREAM])
    pool = [supernet.uniform_arch(o) for o in range(paths)]
    while len(pool) < size:
        every_macs = _every_macs(h, w)
        values = np.sort([every_macs[arch_to_index(a)] for a in pool])
        gap = int(np.argmax(np.diff(values)))
        target = (values[gap] + values[gap + 1]) / 2
        used = {arch_to_index(a) for a in pool}
        nearest = [i for i in np.argsort(np.abs(every_macs - target), kind="stable")[:4 * POOL_ANCHORS + len(used)]
                   if i not in used][:4 * POOL_ANCHORS]
        anchors = [index_to_arch(int(i)) for i in rng.choice(nearest, POOL_ANCHORS, replace=False)]
        fresh = [c for anchor in anchors for c in _completions(anchor) if not {arch_to_index(a) for a in c} & used]

        def unevenness(cycle):
            gaps = np.diff(np.sort(np.concatenate([values, [every_macs[arch_to_index(a)] for a in cycle]])))
            return gaps.max(), float(np.square(gaps).sum())

        pool.extend(min(fresh, key=unevenness))
    return pool


def pool_coverage(pool, h=180, w=240):
    """Per-(block, option) counts, duplicates and MACs spread of a pool, with `ok` and `problems`.

    Spread is ok when the pool holds the smallest and largest subnets and no gap between
    neighbouring MACs exceeds twice the even spacing of the range.
    """
    problems = []
    counts = add_counts(empty_counts(), pool)
    paths = paths_per_cycle()
    want = len(pool) // paths
    if len(pool) % paths:
        problems.append(f"pool size {len(pool)} is not a multiple of {paths}")
    for block, options in counts.items():
        for option, n in options.items():
            if n != want:
                problems.append(f"{block} option {option} appears {n} times, expected {want}")
    duplicates = sorted({format_arch(a) for a in pool if pool.count(a) > 1})
    if duplicates:
        problems.append(f"duplicate archs: {', '.join(duplicates)}")
    macs = sorted(count_macs(a, h, w) for a in pool)
    lo, hi = count_macs(supernet.uniform_arch(0), h, w), count_macs(supernet.uniform_arch(paths - 1), h, w)
    max_gap = _largest_gap(macs)
    allowed_gap = 2 * (hi - lo) / max(len(pool) - 1, 1)
    if macs[0] != lo or macs[-1] != hi:
        problems.append("pool does not hold both the smallest and the largest subnet")
    if max_gap > allowed_gap:
        problems.append(f"largest MACs gap {max_gap / 1e9:.3f} G exceeds {allowed_gap / 1e9:.3f} G")
    return {"size": len(pool), "counts": counts, "duplicates": duplicates,
            "gmacs_min": macs[0] / 1e9, "gmacs_max": macs[-1] / 1e9, "largest_gap_gmacs": max_gap / 1e9,
            "allowed_gap_gmacs": allowed_gap / 1e9, "ok": not problems, "problems": problems}


# ----------------------------------------------------------------------------- CLI

def print_counts(counts):
    """Print fairness counts as a block x option table."""
    print("block   " + " ".join(f"opt{o:>6}" for o in range(max(supernet.SPACE.num_options))))
    for block, options in counts.items():
        print(f"{block:<7} " + " ".join(f"{n:>9}" for n in options.values()))


def main(argv=None):
    """CLI: sample fair cycles (--cycles) or build the eval pool (--pool), and check them."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=0, help="number of fair cycles to sample")
    parser.add_argument("--pool", action="store_true", help="build the eval pool")
    parser.add_argument("--size", type=int, default=12, help="eval pool size (multiple of 3)")
    parser.add_argument("--seed", type=int, default=42, help="sampler / pool seed")
    parser.add_argument("--h", type=int, default=180, help="input height for MACs")
    parser.add_argument("--w", type=int, default=240, help="input width for MACs")
    parser.add_argument("--check", action="store_true", help="exit non-zero unless fair / covered")
    args = parser.parse_args(argv)
    if args.cycles < 0:
        parser.error(f"--cycles {args.cycles} must be >= 0")
    if args.seed < 0:
        parser.error(f"--seed {args.seed} must be >= 0")
    if not args.cycles and not args.pool:
        parser.error("choose --cycles N or --pool")
    ok = True
    if args.cycles:
        ok = print_cycles(args.seed, args.cycles) and ok
    if args.pool:
        try:
            pool = build_eval_pool(args.size, args.seed, args.h, args.w)
        except ConfigError as err:
            parser.error(f"--size: {err}")
        ok = print_pool(pool, args.h, args.w) and ok
    return 1 if args.check and not ok else 0


def print_cycles(seed, cycles):
    """Print `cycles` fair cycles' counts and digest; True when every option ran exactly `cycles` times."""
    counts = counts_for_steps(seed, 0, cycles)
    gap = fairness_gap(counts)
    print(f"{cycles} fair cycles, seed {seed}, first: " + " | ".join(format_arch(a) for a in fair_cycle(seed, 0)))
    print_counts(counts)
    print(f"fairness gap: {gap}")
    print(f"sequence digest: {sequence_digest(seed, 0, cycles)} (a function of seed and cycles: rerun to compare)")
    return gap == 0 and all(n == cycles for o in counts.values() for n in o.values())


def print_pool(pool, h, w):
    """Print the eval pool with its MACs and coverage; True when it covers every option."""
    coverage = pool_coverage(pool, h, w)
    for i, arch in enumerate(pool):
        print(f"{i:>3} {format_arch(arch)}  {count_macs(arch, h, w) / 1e9:6.3f} GMAC")
    print_counts(coverage["counts"])
    print(json.dumps({k: v for k, v in coverage.items() if k != "counts"}))
    print("coverage " + ("ok" if coverage["ok"] else "FAILED: " + "; ".join(coverage["problems"])))
    return coverage["ok"]


if __name__ == "__main__":
    sys.exit(main())
