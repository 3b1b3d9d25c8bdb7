"""Child processes a few at a time, each on its own share of the CPU cores.

A study trains many small subnets alone; on a CPU one TensorFlow process does not keep every core
busy on a small graph, so two processes on one core each finish sooner than two one after the other.
Each slot owns a fixed set of cores (cores[slot::jobs]) and a child started in it is pinned to them.
"""
import os
import subprocess
import time

from errors import RankError


def usable_cores():
    """The cores this process may run on (all of them where affinity is unknown)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))


def slot_cores(jobs, cores=None):
    """[cores of slot 0, cores of slot 1, ...]: the usable cores dealt out in turn; RankError if
    there are fewer cores than slots."""
    cores = usable_cores() if cores is None else cores
    if not 1 <= jobs <= len(cores):
        raise RankError(f"--jobs {jobs}: must be within 1..{len(cores)} (the cores this process may use)")
    return [cores[slot::jobs] for slot in range(jobs)]


def _pinned(cores):
    """A preexec_fn that pins the child to `cores` (nothing where affinity cannot be set)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, cores)


def _last_line(path):
    """The last non-empty line of a child's log (its one-line error), or ''."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _clock(seconds):
    """1h02m, 12m03s or 7s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(done, total, name, durations, running_for, jobs):
    """What finished, how far the whole is, and the time left: the children still to finish at the
    mean time of the finished ones, less what the running ones have done, shared over the slots."""
    left = total - done
    work = left * sum(durations) / len(durations) - sum(running_for)
    estimate = f", about {_clock(max(work, 0) / min(jobs, left))} left" if left else ""
    return (f"[{done}/{total}] {name} finished in {_clock(durations[-1])}; {len(running_for)} running, "
            f"{left - len(running_for)} waiting{estimate}")


def _start(argv, log_path, cores):
    """Popen of argv pinned to `cores`, its output appended to log_path (None: this process's)."""
    if log_path is None:
        return subprocess.Popen(argv, preexec_fn=_pinned(cores))
    with open(log_path, "a") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_pinned(cores))


def run_all(children, jobs, log=print, cores=None, heartbeat=300.0):
    """Run `children`, [(name, argv, log_path)], at most `jobs` at once, each pinned to its slot's
    cores, its output appended to log_path (None: this process's output). Every `heartbeat` seconds
    the last line of each running child's log is repeated. After a failure no new child starts; the
    running ones finish (their work is kept), then RankError names the failed child and its log's
    last line."""
    slots, waiting, running, failed, durations = slot_cores(jobs, cores), list(children), {}, [], []
    last_beat = time.time()
    while waiting or running:
        free = [s for s in range(jobs) if s not in running]
        while free and waiting and not failed:
            slot, (name, argv, log_path) = free.pop(0), waiting.pop(0)
            log(f"started {name} on cores {','.join(map(str, slots[slot]))}: {os.path.basename(argv[0])} "
                f"{' '.join(argv[1:])}" + (f" (output: {log_path})" if log_path else ""))
            running[slot] = (name, log_path, _start(argv, log_path, slots[slot]), time.time())
        if not running:
            break
        time.sleep(0.2)
        if time.time() - last_beat >= heartbeat:
            last_beat = time.time()
            for name, log_path, _, _ in running.values():
                if log_path:
                    log(f"  {name}: {_last_line(log_path)}")
        for slot, (name, log_path, proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[slot]
            if proc.returncode != 0:
                failed.append(f"{name} failed (exit {proc.returncode})" +
                              (f": {_last_line(log_path)} (see {log_path})" if log_path else ""))
                log(failed[-1] + (f"; waiting for the {len(running)} running" if running else ""))
                continue
            durations.append(time.time() - t0)
            log(progress_line(len(durations), len(children), name, durations,
                              [time.time() - r[3] for r in running.values()], jobs))
    if failed:
        raise RankError(failed[0])
