"""Checkpoints and run folders: TF1 Saver files for `best` and `last`, the JSON meta beside them,
atomic JSON writes, and finding the run to resume or evaluate.

A checkpoint is committed by its meta: the Saver first writes a fresh prefix, then `meta.json`
is replaced atomically to point at it, and only then are older prefixes removed. A process killed
at any instant therefore leaves a meta that names complete files.
"""
import contextlib
import fcntl
import glob
import json
import os
import time

import tensorflow as tf

import supernet

CHECKPOINT_KINDS = ("best", "last")
META_NAME = "meta.json"


class CheckpointError(Exception):
    """A missing, unreadable or incompatible checkpoint or run; the message names the path."""


def write_json_atomic(path, obj):
    """Write `obj` as JSON to `path` via a temp file, fsync and rename: never a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path, what):
    """Read a JSON file, raising CheckpointError that names `what` and the path if it cannot."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{what} unreadable: {path}: {err}") from None


def run_folder(output_dir, experiment_name):
    """output_dir/experiment_name; CheckpointError for a name that would leave output_dir."""
    name = experiment_name
    if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        raise CheckpointError(f"experiment name {name!r} must be a plain folder name inside {output_dir}")
    return os.path.join(output_dir, name)


@contextlib.contextmanager
def writer_lock(directory, what):
    """One writer at a time: an exclusive OS lock on <directory>/.lock while the block runs. The
    kernel releases it when the process ends, however it ends, so a killed writer leaves no stale
    lock. A second writer gets CheckpointError naming `what` and the holder's PID."""
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CheckpointError(f"{what} {directory} is being written by another process (PID {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def checkpoint_dir(run_dir, kind):
    """checkpoints/<kind> of a run; kind is 'best' or 'last'."""
    if kind not in CHECKPOINT_KINDS:
        raise CheckpointError(f"checkpoint type {kind!r} is not one of {', '.join(CHECKPOINT_KINDS)}")
    return os.path.join(run_dir, "checkpoints", kind)


def search_space_signature(input_h, input_w):
    """What a checkpoint must share with the graph that restores it."""
    return {"blocks": list(supernet.BLOCKS), "num_options": supernet.NUM_OPTIONS,
            "kernel_sizes": list(supernet.KERNEL_SIZES), "input_size": [input_h, input_w]}


def save(sess, saver, run_dir, kind, meta):
    """Save the session's variables as checkpoint `kind` with `meta`; returns the committed meta."""
    directory = checkpoint_dir(run_dir, kind)
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(directory, f"model-{meta['global_step']}-{time.time_ns()}")
    saver.save(sess, prefix, write_meta_graph=False, write_state=False)
    meta = dict(meta, checkpoint=os.path.basename(prefix))
    write_json_atomic(os.path.join(directory, META_NAME), meta)
    for path in glob.glob(os.path.join(directory, "model-*")):
        if not os.path.basename(path).startswith(meta["checkpoint"] + "."):
            os.remove(path)
    return meta


def load_meta(run_dir, kind):
    """The committed meta of checkpoint `kind`, with `prefix` (the Saver path) added."""
    directory = checkpoint_dir(run_dir, kind)
    meta = read_json(os.path.join(directory, META_NAME), f"'{kind}' checkpoint meta")
    prefix = os.path.join(directory, meta.get("checkpoint", ""))
    for suffix in (".index", ".data-00000-of-00001"):
        if not os.path.isfile(prefix + suffix):
            raise CheckpointError(f"'{kind}' checkpoint file missing: {prefix}{suffix}")
    return dict(meta, prefix=prefix)


def check_compatible(meta, input_h, input_w, where):
    """Raise CheckpointError unless the checkpoint's search space matches ours, and its input size
    too unless input_h and input_w are None: the network is fully convolutional, so scoring may
    run at any size; only resuming training needs the same one."""
    theirs = meta.get("search_space", {})
    ours = search_space_signature(input_h, input_w)
    if input_h is None and input_w is None:
        del ours["input_size"]
    for field, value in ours.items():
        if theirs.get(field) != value:
            raise CheckpointError(f"checkpoint {where} was made with {field}={theirs.get(field)}, this graph has {value}")


def restore(sess, saver, run_dir, kind, input_h=None, input_w=None):
    """Restore checkpoint `kind` of a run into the session after checking it fits (the input size
    only if given, see check_compatible); returns its meta."""
    meta = load_meta(run_dir, kind)
    check_compatible(meta, input_h, input_w, meta["prefix"])
    try:
        saver.restore(sess, meta["prefix"])
    except tf.errors.OpError as err:
        raise CheckpointError(f"cannot restore {meta['prefix']}: {err.message.splitlines()[0]}") from None
    return meta


def newest_run(output_dir, kind="last"):
    """The run folder under `output_dir` whose `kind` checkpoint was committed most recently."""
    metas = glob.glob(os.path.join(output_dir, "*", "checkpoints", kind, META_NAME))
    if not metas:
        raise CheckpointError(f"no experiment with a '{kind}' checkpoint under {output_dir}/")
    newest = max(metas, key=os.path.getmtime)
    return os.path.dirname(os.path.dirname(os.path.dirname(newest)))
