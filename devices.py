"""The devices TensorFlow computes on, said once at the start of every entry point.

TensorFlow's start-up lines are held back by tensorflow_quiet, the door it comes in by; `report()`
quotes the relevant one when nvidia-smi lists a GPU that TensorFlow cannot use.

An entry point calls `report()` once at the start (it prints one line and returns a dict) and
stores that dict under "devices" in every JSON it writes:

    python devices.py                 # the line every entry point prints
    python devices.py --devices 3     # the three paths of a fair step on three devices
"""
import json
import os
import platform
import re
import subprocess
import sys

import fair
from errors import ArgumentParser, DeviceError
import tensorflow_quiet
from tensorflow_quiet import tf

_ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_GPU_WORDS = re.compile(r"cuda|gpu|cudnn|dlopen", re.IGNORECASE)


# ----------------------------------------------------------------------------- what is there

def nvidia_smi_gpus():
    """The GPUs `nvidia-smi` lists, [{"name", "memory_mib"}]; [] when it is missing, fails or lists none.
    The Makefile asks the same question to choose between tensorflow and tensorflow[and-cuda]."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    gpus = []
    for line in filter(None, (raw.strip() for raw in out.stdout.splitlines())):
        name, _, memory = line.rpartition(",") if "," in line else (line, "", "")
        gpus.append({"name": name.strip(), "memory_mib": int(memory) if memory.strip().isdigit() else None})
    return gpus


def tensorflow_gpus(listed):
    """The GPUs TensorFlow sees, [{"name", "compute_capability", "memory_mib"}], in its order;
    the memory comes from the `listed` (nvidia-smi) GPU of the same name, None if there is none."""
    with tensorflow_quiet.quiet(tensorflow_quiet.STARTUP_LINES):
        physical = tf.config.list_physical_devices("GPU")
        details = [tf.config.experimental.get_device_details(gpu) for gpu in physical]
    unmatched = list(listed)
    gpus = []
    for gpu, detail in zip(physical, details):
        name = detail.get("device_name", gpu.name)
        match = next((g for g in unmatched if g["name"] == name), None)
        if match:
            unmatched.remove(match)
        capability = detail.get("compute_capability")
        gpus.append({"name": name, "compute_capability": ".".join(map(str, capability)) if capability else None,
                     "memory_mib": match["memory_mib"] if match else None})
    return gpus


def cpu_name():
    """The CPU's model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_threads():
    """The threads TensorFlow runs one op on: its setting, else the TF_NUM_INTRAOP_THREADS it reads
    from the environment, else every core this process may use."""
    configured = tf.config.threading.get_intra_op_parallelism_threads()
    if configured:
        return configured
    from_environment = os.environ.get("TF_NUM_INTRAOP_THREADS", "").strip()
    if from_environment.isdigit() and int(from_environment) > 0:
        return int(from_environment)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def tensorflow_said():
    """The last held-back start-up line about CUDA or GPUs, without its log prefix; '' if none."""
    lines = [_ABSL_PREFIX.sub("", line).strip() for line in tensorflow_quiet.STARTUP_LINES if _GPU_WORDS.search(line)]
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------- where the paths run

def path_devices(count, gpus, paths):
    """The device names the `paths` paths of a fair step are spread over: `count` GPUs, or without
    a GPU `count` logical CPU devices (configured here, so before TensorFlow's first session)."""
    if not 1 <= count <= paths:
        raise DeviceError(f"--devices {count} must be between 1 and {paths} (one per path at most)")
    if gpus:
        if count > len(gpus):
            raise DeviceError(f"--devices {count} needs {count} GPUs, TensorFlow sees {len(gpus)}")
        return [f"/device:GPU:{i}" for i in range(count)]
    return logical_cpus(count, "--devices")


def logical_cpus(count, flag):
    """`count` logical CPU devices sharing the CPU's threads (configured here, so before
    TensorFlow's first session; `flag` is named if it is too late)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if count > 1 and len(tf.config.get_logical_device_configuration(cpu) or [None]) != count:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:
            raise DeviceError(f"{flag} {count}: TensorFlow's devices are already initialised in this process; "
                              "devices.report() must run before the first session") from None
    return [f"/device:CPU:{i}" for i in range(count)]


def _gpu_text(gpus):
    def one(i, gpu):
        memory = f", {gpu['memory_mib'] / 1024:.0f} GiB" if gpu["memory_mib"] else ""
        capability = f", compute {gpu['compute_capability']}" if gpu["compute_capability"] else ""
        return f"GPU {i}: {gpu['name']}{memory}{capability}"
    return "; ".join(one(i, gpu) for i, gpu in enumerate(gpus))


def summary_line(info):
    """The one line an entry point prints: the GPUs TensorFlow uses, or "no GPU visible: N CPU
    threads", then where the paths go and any GPU that nvidia-smi lists but TensorFlow cannot use."""
    if info["gpus"]:
        text = _gpu_text(info["gpus"])
    else:
        text = f"no GPU visible: {info['cpu_threads']} CPU threads ({info['cpu']})"
    text += f"; TensorFlow {info['tensorflow']}"
    placed = info["path_devices"]
    if len(placed) > 1:
        shared = "" if info["gpus"] else " (logical devices sharing those threads)"
        text += f"; the paths of a fair step on {', '.join(d.replace('/device:', '') for d in placed)}{shared}"
    if info["unusable_gpus"]:
        text += f"; {unusable_text(info)}"
    return f"devices: {text}"


def unusable_text(info):
    """Why the GPUs nvidia-smi lists go unused, and the remedy."""
    listed = info["nvidia_smi_gpus"]
    said = f" (TensorFlow said: {info['tensorflow_said']})" if info["tensorflow_said"] else ""
    return (f"nvidia-smi lists {len(listed)} GPU{'s' if len(listed) > 1 else ''} ({listed[0]['name']}) but "
            f"TensorFlow sees none: its CUDA libraries are probably missing{said}; "
            "`make venv GPU=1` installs tensorflow[and-cuda]")


def report(count=1, allow_cpu=True, log=print, paths=1):
    """Find the devices, spread the `paths` paths of a fair step over `count` of them (at most one
    device per path), print one line (via `log`,
    unless None) and return everything as a JSON-ready dict (its "summary" is that line).

    Call once at the start of an entry point, before any session; store the dict under "devices"
    in the JSON outputs. With allow_cpu=False, a GPU that nvidia-smi lists but TensorFlow cannot
    use is a DeviceError instead of a CPU run.
    """
    listed = nvidia_smi_gpus()
    gpus = tensorflow_gpus(listed)
    build = tf.sysconfig.get_build_info()
    info = {"tensorflow": tf.__version__,
            "tensorflow_cuda": build.get("cuda_version") if build.get("is_cuda_build") else None,
            "gpus": gpus, "nvidia_smi_gpus": listed, "unusable_gpus": bool(listed and not gpus),
            "cpu": cpu_name(), "cpu_threads": cpu_threads(), "tensorflow_said": tensorflow_said(),
            "log_level_set_by_user": tensorflow_quiet.USER_LOG_LEVEL}
    if info["unusable_gpus"] and not allow_cpu:
        raise DeviceError(f"{unusable_text(info)}; --allow_cpu runs on the CPU anyway")
    info["path_devices"] = path_devices(count, gpus, paths)
    info["summary"] = summary_line(info)
    if log:
        log(info["summary"])
    return info


def main(argv=None):
    """Print the device line (and with --json the whole report); exit 1 with a one-line error."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1, help="devices to spread a fair step's paths over")
    parser.add_argument("--json", action="store_true", help="also print the whole report as JSON")
    args = parser.parse_args(argv)
    try:
        info = report(args.devices, paths=fair.paths_per_cycle())
    except DeviceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
