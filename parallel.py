"""Child processes a few at a time, each on its own share of the CPU cores, or on its own GPU.

A study trains many small subnets alone; on a CPU one TensorFlow process does not keep every core
busy on a small graph, so two processes on one core each finish sooner than two one after the other.
Each slot owns a fixed set of cores (cores[slot::jobs]) and a child started in it is pinned to them.
Where GPUs are given, slot k owns GPU k instead (CUDA_VISIBLE_DEVICES=k in the child's environment:
TensorFlow there sees that one GPU) and the children share the cores.
"""
import os
import signal
import subprocess
import sys
import threading
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


def progress_line(name, finished, running, waiting, jobs):
    """What finished, how far the whole is, and the time left. finished: [(seconds, work)] of the
    children done, running: [(seconds so far, work)], waiting: [work], each child's work in any one
    unit (1 each when nothing better is known): the work left at the finished children's seconds
    per unit of work, less what the running ones have done, shared over the slots."""
    done, left = len(finished), len(running) + len(waiting)
    per_unit = sum(s for s, _ in finished) / sum(w for _, w in finished)  # work > 0: see _weigher
    work = (sum(w for _, w in running) + sum(waiting)) * per_unit - sum(s for s, _ in running)
    estimate = f", about {_clock(max(work, 0) / min(jobs, left))} left" if left else ""
    return (f"[{done}/{done + left}] {name} finished in {_clock(finished[-1][0])}; {len(running)} running, "
            f"{len(waiting)} waiting{estimate}")


def _weigher(work):
    """name -> the child's work for the time left: `work`'s, at least 5% of the mean (a child with
    almost nothing left still starts up and saves), or 1 each without `work`."""
    if not work:
        return lambda name: 1.0
    floor = max(0.05 * sum(work.values()) / len(work), 1e-9)
    return lambda name: max(work[name], floor)


def _say(line):
    print(line, flush=True)  # before the children's own output, also through a pipe


class _Child:
    """One started child: its name, log, process, start time."""

    def __init__(self, name, argv, log_path, cores, env, gpu=None):
        self.name, self.log_path, self.start = name, log_path, time.monotonic()
        if gpu is not None:
            env = dict(os.environ if env is None else env, CUDA_VISIBLE_DEVICES=str(gpu))
        if log_path is None:
            self.proc = subprocess.Popen(argv, env=env)
        else:
            with open(log_path, "a") as out:
                self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        if gpu is None and hasattr(os, "sched_setaffinity"):  # at once, before it starts threads: they inherit it
            os.sched_setaffinity(self.proc.pid, cores)

    def failure(self):
        """The one line that says how it failed."""
        where = f": {_last_line(self.log_path)} (see {self.log_path})" if self.log_path else " (its output is above)"
        return f"{self.name} failed (exit {self.proc.returncode}){where}"


def _stop(running):
    """Terminate and reap the children still running (this process was interrupted or failed);
    each resumes from its last saved state when started again."""
    for child in running.values():
        if child.proc.poll() is None:
            child.proc.terminate()
    for child in running.values():
        child.proc.wait()


def _exit_on_sigterm():
    """While children run, SIGTERM (kill's default) raised as SystemExit in the main thread, so that run_all
    stops its children too rather than leaving them training, unseen, into folders a rerun resumes; returns
    the handler to restore (None off the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_all(children, jobs, log=_say, cores=None, heartbeat=300.0, env=None, gpus=0, on_finished=None, work=None):
    """Run `children`, [(name, argv, log_path)], at most `jobs` at once, each pinned to its slot's
    cores (with `gpus` > 0: on its slot's GPU, jobs <= gpus), its output appended to log_path
    (None: this process's output), in the environment `env` (None: this process's); on_finished(name),
    if given, as each child succeeds. `work` {name: the work a child has left, in any one unit}
    weighs the time left (by default every child weighs the same). Every `heartbeat` seconds
    the last line of each running child's log is repeated. After a failure no new child starts and
    the running ones finish (their work is kept), then RankError names the failed child and how it
    failed. Interrupted or killed (SIGTERM), it stops the running children before it returns."""
    if gpus and not 1 <= jobs <= gpus:
        raise RankError(f"--jobs {jobs}: must be within 1..{gpus} (one run per GPU)")
    slots = [[f"GPU {slot}"] for slot in range(jobs)] if gpus else slot_cores(jobs, cores)
    waiting, running, failed, finished = list(children), {}, [], []
    weight = _weigher(work)
    last_beat, previous_handler = time.monotonic(), _exit_on_sigterm()
    try:
        while waiting or running:
            free = [s for s in range(jobs) if s not in running]
            while free and waiting and not failed:
                slot, (name, argv, log_path) = free.pop(0), waiting.pop(0)
                place = slots[slot][0] if gpus else "cores " + ",".join(map(str, slots[slot]))
                log(f"started {name} on {place}: {os.path.basename(argv[0])} "
                    f"{' '.join(argv[1:])}" + (f" (output: {log_path})" if log_path else ""))
                running[slot] = _Child(name, argv, log_path, slots[slot], env, slot if gpus else None)
            time.sleep(0.2)
            if time.monotonic() - last_beat >= heartbeat:
                last_beat = time.monotonic()
                for child in (c for c in running.values() if c.log_path):
                    log(f"  {child.name}: {_last_line(child.log_path)}")
            for slot, child in [(s, c) for s, c in running.items() if c.proc.poll() is not None]:
                del running[slot]
                if child.proc.returncode:
                    failed.append(child.failure())
                    log(failed[-1] + (f"; waiting for the {len(running)} running" if running else ""))
                    continue
                finished.append((time.monotonic() - child.start, weight(child.name)))
                if on_finished:
                    on_finished(child.name)
                log(progress_line(child.name, finished,
                                  [(time.monotonic() - c.start, weight(c.name)) for c in running.values()],
                                  [] if failed else [weight(c[0]) for c in waiting], jobs))
            if failed and not running:
                raise RankError(failed[0])
    finally:
        _stop(running)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
