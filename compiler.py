"""The edge compiler, behind one door, and the boards it compiles for.

`compile_model(model_path, target, out_dir)` compiles a full-INT8 TFLite model for a board target
and returns its summary (inference time and FPS, cycles, SRAM and off-chip flash used, NPU and
CPU operators with the CPU ones named) and its per-layer cycles. Arm's Vela (ethos-u-vela) for
the Ethos-U NPUs is the one implementation (class Vela); a second compiler is a second class with
the same `version()` and `compile()`, named by the target's `compiler`.

A target (`load_target`) names a board: the compiler's accelerator, system config and memory mode
(sections of Vela's own Arm/vela.ini, or of the target's own `vela_ini`), the optimise strategy,
and the budget the model must fit: `sram_kib` (the arena it may use), `flash_kib`, and optionally
`min_fps`. Presets live in targets/ as JSON files; any other JSON file of the same keys works.
"""
import configparser
import csv
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import atomic_files
from errors import CompileError

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS_DIR = os.path.join(HERE, "targets")
ACCELERATORS = tuple(f"ethos-u55-{n}" for n in (32, 64, 128, 256)) + ("ethos-u65-256", "ethos-u65-512") + tuple(
    f"ethos-u85-{n}" for n in (128, 256, 512, 1024, 2048))  # Vela's --accelerator-config choices
OPTIMISE = ("Performance", "Size")
VELA_INI = "Arm/vela.ini"  # Vela's own system configs and memory modes, inside the ethos-u-vela package
VELA_SUFFIX = "_vela.tflite"  # Vela names the compiled model <model's stem>_vela.tflite


@dataclasses.dataclass(frozen=True)
class Target:
    """A board: what the compiler builds for, and the budget a model must fit (None: no limit)."""

    name: str
    accelerator_config: str
    system_config: str
    memory_mode: str
    optimise: str = "Performance"
    sram_kib: float = None
    flash_kib: float = None
    min_fps: float = None
    vela_ini: str = None
    compiler: str = "vela"

    def compile_key(self):
        """What a compile depends on (not the budget): the key of the compile cache."""
        return {k: getattr(self, k) for k in ("compiler", "accelerator_config", "system_config", "memory_mode",
                                              "optimise")} | {"vela_ini": _file_text(self.vela_ini)}


def _file_text(path):
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:  # load_target checked that it reads
        return f.read()


# ----------------------------------------------------------------------------- targets

REQUIRED = ("name", "accelerator_config", "system_config", "memory_mode", "optimise", "sram_kib", "flash_kib")
OPTIONAL = ("min_fps", "vela_ini", "compiler")
# 4 GiB: the 32-bit address space of the Cortex-M beside the NPU; a million frames a second is far beyond any NPU
TARGET_MAXIMA = {"sram_kib": 4 * 1024 * 1024, "flash_kib": 4 * 1024 * 1024, "min_fps": 1_000_000}


def preset_names():
    """The names of the shipped presets (targets/<name>.json)."""
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(TARGETS_DIR, "*.json")))


def load_target(name_or_path):
    """The Target a preset name or a target JSON file describes, every field checked (and the
    compiler's sections looked up); CompileError naming the file and field otherwise."""
    path = name_or_path if name_or_path.endswith(".json") else os.path.join(TARGETS_DIR, f"{name_or_path}.json")
    if not os.path.isfile(path):
        raise CompileError(f"--target {name_or_path}: no such target file or preset "
                           f"(presets: {', '.join(preset_names())})")
    try:
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
    except (OSError, ValueError) as err:
        raise CompileError(f"target {path} unreadable: {getattr(err, 'strerror', None) or err}") from None
    if not isinstance(fields, dict):
        raise CompileError(f"target {path}: must hold a JSON object")
    for key in REQUIRED:
        if key not in fields:
            raise CompileError(f"target {path}: field '{key}' is missing")
    unknown = sorted(set(fields) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise CompileError(f"target {path}: unknown field '{unknown[0]}'")
    target = Target(**fields)
    _check_target(target, path)
    if target.vela_ini is not None and not os.path.isabs(target.vela_ini):
        target = dataclasses.replace(target, vela_ini=os.path.join(os.path.dirname(os.path.abspath(path)),
                                                                   target.vela_ini))
    compiler_for(target).check(target, path)
    return target


def _check_target(target, path):
    """CompileError naming `path` and the field unless every field has its type and range."""
    for key in ("name", "accelerator_config", "system_config", "memory_mode", "optimise", "compiler"):
        if not isinstance(getattr(target, key), str) or not getattr(target, key):
            raise CompileError(f"target {path}: field '{key}' must be a non-empty string")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", target.name):
        raise CompileError(f"target {path}: field 'name' {target.name!r} must be a plain name (letters, digits, _.-)")
    if target.optimise not in OPTIMISE:
        raise CompileError(f"target {path}: field 'optimise' must be one of {', '.join(OPTIMISE)}, "
                           f"got {target.optimise!r}")
    for key, most in TARGET_MAXIMA.items():
        value = getattr(target, key)
        if value is None and key == "min_fps":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= most:
            raise CompileError(f"target {path}: field '{key}' must be a positive number at most {most:,}, "
                               f"got {value!r}")
    if target.vela_ini is not None and not isinstance(target.vela_ini, str):
        raise CompileError(f"target {path}: field 'vela_ini' must be a file name")
    if target.compiler not in COMPILERS:
        raise CompileError(f"target {path}: field 'compiler' must be one of {', '.join(COMPILERS)}")


def flag_target(accelerator_config, system_config, memory_mode, optimise="Performance"):
    """A Target from export.py's flags: no budget, Vela's own vela.ini."""
    target = Target("flags", accelerator_config, system_config, memory_mode, optimise)
    compiler_for(target).check(target, "the flags")
    return target


# ----------------------------------------------------------------------------- the door

def compiler_for(target, path=None):
    """The compiler implementation a target names (Vela; `path`: its executable)."""
    return COMPILERS[target.compiler](path)


def compile_model(model_path, target, out_dir, path=None):
    """Compile `model_path` for `target` into out_dir: (summary, per-layer rows); see Vela.compile."""
    return compiler_for(target, path).compile(model_path, target, out_dir)


class Vela:
    """Arm's Vela compiler for the Ethos-U NPUs, run as the `vela` command installed beside this
    Python (else on PATH, or `path`)."""

    name = "vela"

    def __init__(self, path=None):
        candidate = path or os.path.join(os.path.dirname(sys.executable), "vela")
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            found = shutil.which("vela") if path is None else None
            if not found:
                raise CompileError(f"Vela not found at {candidate}: install ethos-u-vela (it is in requirements.txt) "
                                   "or pass --vela PATH")
            candidate = found
        self.path = candidate

    def version(self):
        """Vela's version string (what compiled the models), or 'unknown'."""
        proc = subprocess.run([self.path, "--version"], capture_output=True, text=True)
        return f"vela {proc.stdout.strip() or 'unknown'}"

    @staticmethod
    def ini_path(target):
        """The vela.ini holding the target's sections: its own, or the one inside the Vela package."""
        if target.vela_ini is not None:
            return target.vela_ini
        import ethosu  # where the package keeps Arm/vela.ini
        return os.path.join(os.path.dirname(ethosu.__path__[0] + "/"), "config_files", VELA_INI)

    def check(self, target, where):
        """CompileError naming `where` unless the accelerator is Vela's and the vela.ini has the
        target's system config and memory mode sections."""
        if target.accelerator_config not in ACCELERATORS:
            raise CompileError(f"{where}: accelerator_config {target.accelerator_config!r} is not one of Vela's "
                               f"({', '.join(ACCELERATORS)})")
        ini = self.ini_path(target)
        parser = configparser.ConfigParser()
        try:
            with open(ini, encoding="utf-8") as f:
                parser.read_file(f)
        except UnicodeDecodeError as err:
            raise CompileError(f"{where}: vela.ini {ini} is not UTF-8 text ({err.reason} at byte {err.start})") \
                from None
        except (OSError, configparser.Error) as err:
            reason = getattr(err, 'strerror', None) or ini_error_line(err)
            raise CompileError(f"{where}: vela.ini {ini} unreadable: {reason}") from None
        for kind, name in (("System_Config", target.system_config), ("Memory_Mode", target.memory_mode)):
            if not parser.has_section(f"{kind}.{name}"):
                raise CompileError(f"{where}: {ini} has no section [{kind}.{name}]")

    def compile(self, model_path, target, out_dir):
        """Compile an INT8 TFLite model for `target` into out_dir; returns (summary, per-layer rows
        of --verbose-performance). The summary: accelerator_config, system_config, memory_mode,
        clock_hz, inference_ms, fps, sram_used_kib, off_chip_flash_used_kib, cycles_total,
        cycles_npu, macs, npu_operators, cpu_operators, cpu_operator_names, compiled_model."""
        command = [self.path, model_path, "--output-dir", out_dir, "--config", self.ini_path(target),
                   "--accelerator-config", target.accelerator_config, "--system-config", target.system_config,
                   "--memory-mode", target.memory_mode, "--optimise", target.optimise,
                   "--verbose-performance", "--show-cpu-operations"]
        try:
            proc = subprocess.run(command, capture_output=True, text=True)
        except OSError as err:
            raise CompileError(f"cannot run Vela {self.path}: {err.strerror or err}") from None
        if proc.returncode:
            lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit code {proc.returncode}"
            raise CompileError(f"Vela failed on {model_path}: {reason}")
        stem = os.path.splitext(os.path.basename(model_path))[0]
        summary = parse_vela_summary(os.path.join(out_dir, f"{stem}_summary_{target.system_config}.csv"))
        summary.update(parse_operator_counts(proc.stdout))
        summary["compiled_model"] = os.path.join(out_dir, stem + VELA_SUFFIX)
        return summary, read_csv_rows(os.path.join(out_dir, f"{stem}_per-layer.csv"), "Vela per-layer report")


def ini_error_line(err):
    """A configparser error on one line: its lines joined, the quoted source line without the newline
    its repr keeps (`'garbage\\n'`)."""
    return "; ".join(line.strip().rstrip(".").replace("\\n'", "'") for line in str(err).splitlines() if line.strip())


COMPILERS = {"vela": Vela}


class CompileCache:
    """Compiles kept under `directory` so that no model is compiled twice, across runs too.

    By content: models/<key>/ holds the compiler's output for one model file and target (key: a
    sha256 of the model's bytes, the target's compile settings and the compiler's version).
    By structure: <key>.json holds the figures of a model structure (search space version, arch,
    input size) for a target, whatever its weights: SRAM, cycles and the operators the NPU takes
    depend on the structure alone, flash on the weights only through their compression. Entries
    are written atomically (a temp folder renamed, a JSON replaced); a killed compile leaves none,
    and of two processes compiling one model at once the second to finish uses the first's entry.
    """

    def __init__(self, directory, tool):
        self.directory, self.tool, self.version = directory, tool, tool.version()
        os.makedirs(os.path.join(directory, "models"), exist_ok=True)
        self._remove_killed_work()

    def _remove_killed_work(self):
        """Delete the work folders and JSON temp files of compiles whose process was killed."""
        for pattern in ("*.tmp*", os.path.join("models", "*.tmp*")):
            atomic_files.remove_killed_temps(os.path.join(self.directory, pattern))

    def _key(self, *parts):
        return hashlib.sha256(json.dumps([self.version, *parts], sort_keys=True).encode()).hexdigest()[:24]

    def structure(self, structure, target):
        """The cached figures {"summary", "per_layer"} of a structure for `target`, or None."""
        path = os.path.join(self.directory, self._key(structure, target.compile_key()) + ".json")
        entry = _cache_entry(path, ("compiler", "per_layer"))
        if entry is None:  # none yet, or damaged: the model is compiled (or taken by content) and it is rewritten
            return None
        if entry.get("compiler") != self.version:
            raise CompileError(f"compile cache entry {path} was made by {entry.get('compiler')}, this is "
                               f"{self.version}: remove it")
        return entry

    def compile(self, model_path, target, out_dir, structure=None):
        """The compiler's output for `model_path` in out_dir and (summary, per-layer rows), from the
        cache when this model was compiled for this target before; `structure` also records the
        figures under the model's structure."""
        with open(model_path, "rb") as f:
            content = self._key(hashlib.sha256(f.read()).hexdigest(), target.compile_key())
        cached = os.path.join(self.directory, "models", content)
        figures = _cache_entry(os.path.join(cached, "figures.json"), ("per_layer",))
        if figures is None:
            if os.path.isdir(cached):  # damaged: compiled again
                shutil.rmtree(cached, ignore_errors=True)
            self._compile_into(cached, model_path, target)
            figures = _cache_entry(os.path.join(cached, "figures.json"), ("per_layer",))
            if figures is None:
                raise CompileError(f"compile cache entry {cached} was replaced while in use: compile again")
        compiled = _copy_renamed(cached, out_dir, os.path.basename(figures["summary"]["compiled_model"]),
                                 os.path.splitext(os.path.basename(model_path))[0])
        summary = dict(figures["summary"], compiled_model=compiled)
        if structure is not None:
            key = self._key(structure, target.compile_key())
            atomic_files.write_json_atomic(os.path.join(self.directory, key + ".json"),
                                           {"compiler": self.version, "structure": structure, "model_key": content,
                                            "summary": summary, "per_layer": figures["per_layer"]})
        return summary, figures["per_layer"]

    def _compile_into(self, cached, model_path, target):
        """Compile into a work folder renamed to `cached` when done, with figures.json beside the output."""
        work = f"{cached}.tmp{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        try:
            summary, per_layer = self.tool.compile(model_path, target, work)
            atomic_files.write_json_atomic(os.path.join(work, "figures.json"),
                                           {"summary": summary, "per_layer": per_layer,
                                            "model": os.path.basename(model_path)})
        except BaseException:  # a failed compile leaves no work folder behind
            shutil.rmtree(work, ignore_errors=True)
            raise
        try:
            os.rename(work, cached)
        except OSError:
            if not os.path.isdir(cached):
                raise
            shutil.rmtree(work)  # another process put the same compile in place first: use that one


def _copy_renamed(cached, out_dir, compiled_name, stem):
    """Copy a cache entry's compiler output into out_dir named as a compile of the model `stem`
    would name it (the entry keeps the names of the model first compiled with these bytes); returns
    the compiled model's path there."""
    first_stem = compiled_name[:-len(VELA_SUFFIX)] if compiled_name.endswith(VELA_SUFFIX) else None
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(cached):
        if name != "figures.json":
            renamed = stem + name[len(first_stem):] if first_stem and name.startswith(first_stem) else name
            shutil.copy2(os.path.join(cached, name), os.path.join(out_dir, renamed))
    return os.path.join(out_dir, stem + VELA_SUFFIX if first_stem else compiled_name)


def _cache_entry(path, fields):
    """A compile cache entry: a JSON object with `fields`, "summary" (naming the compiled model) among
    them; None when it is missing or damaged (a cache is compiled again, not trusted)."""
    try:
        with open(path) as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    whole = (isinstance(entry, dict) and all(k in entry for k in fields) and isinstance(entry.get("summary"), dict)
             and isinstance(entry["summary"].get("compiled_model"), str))
    return entry if whole else None


def read_csv_rows(path, what):
    """The rows of a CSV file as dicts; CompileError naming `what` and the path if it cannot be read."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError as err:
        raise CompileError(f"{what} unreadable: {path}: {err.strerror}") from None


def parse_vela_summary(path):
    """The figures of Vela's summary CSV: clock, inference time and FPS, SRAM and off-chip flash
    used (KiB), cycles, MACs, and the accelerator, system config and memory mode it compiled for."""
    rows = read_csv_rows(path, "Vela summary")
    if len(rows) != 1:
        raise CompileError(f"Vela summary {path} has {len(rows)} rows, expected 1")
    row = rows[0]
    try:
        return {"accelerator_config": row["accelerator_configuration"], "system_config": row["system_config"],
                "memory_mode": row["memory_mode"], "clock_hz": float(row["core_clock"]),
                "inference_ms": float(row["inference_time"]) * 1e3, "fps": float(row["inferences_per_second"]),
                "sram_used_kib": float(row["sram_memory_used"]),
                "off_chip_flash_used_kib": float(row["off_chip_flash_memory_used"]),
                "cycles_total": float(row["cycles_total"]), "cycles_npu": float(row["cycles_npu"]),
                "macs": int(float(row["nn_macs"]))}
    except (KeyError, ValueError) as err:
        raise CompileError(f"Vela summary {path}: field {err} missing or not a number") from None


def parse_operator_counts(stdout):
    """NPU and CPU operator counts from Vela's printed summary, with the CPU operators' descriptions
    (type = tensor name) as --show-cpu-operations lists them."""
    counts = {kind: re.search(rf"^{kind} operators = (\d+)", stdout, re.M) for kind in ("NPU", "CPU")}
    if not all(counts.values()):
        raise CompileError("Vela printed no NPU/CPU operator counts")
    cpu_ops = [m.group(1) for m in re.finditer(r"^\s+CPU: (.+?)(?: \(outputs .*)?$", stdout, re.M)]
    return {"npu_operators": int(counts["NPU"].group(1)), "cpu_operators": int(counts["CPU"].group(1)),
            "cpu_operator_names": cpu_ops}
