"""Checkpoints and run folders: TF1 Saver files for `best` and `last`, the JSON meta beside them,
one writer per folder, a failed command's files put back, and finding the run to
resume or score.

A checkpoint is committed by its meta: the Saver first writes a fresh prefix, then `meta.json`
is replaced atomically to point at it, and only then are older prefixes removed. A process killed
at any instant therefore leaves a meta that names complete files.
"""
import contextlib
import fcntl
import fnmatch
import glob
import hashlib
import json
import os
import shutil
import time

import tensorflow_quiet
from tensorflow_quiet import tf

import atomic_files
import supernet
from errors import ArchError, CheckpointError, OutputError, one_line

CHECKPOINT_KINDS = ("best", "last")
CHECKPOINT_KIND_HELP = "which of the run's checkpoints: best (its lowest eval-pool EPE) or last (its newest)"
META_NAME = "meta.json"


def read_json(path, what):
    """Read a JSON file, raising CheckpointError that names `what` and the path if it cannot."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as err:  # a JSON or encoding error names its line; an OSError its reason
        raise CheckpointError(f"{what} unreadable: {path}: {getattr(err, 'strerror', None) or err}") from None


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
    lock. A second writer gets CheckpointError naming `what` and the holder's PID (the kernel's
    word for it; the PID written in .lock only where the kernel's list cannot be read)."""
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise CheckpointError(f"cannot write into {what} folder {directory}: {err.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd) or os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CheckpointError(f"{what} {directory} is being written by another process (PID {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _lock_holder(fd):
    """The PID of the process holding the flock on `fd`'s file, as /proc/locks lists it; None where
    that list cannot be read. The PID a writer stored in .lock may be another's: a file copied or
    written over by hand, or a PID the kernel has since given to another process."""
    st = os.fstat(fd)
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            listed = [line.split() for line in f]
    except OSError:
        return None
    for fields in listed:  # "1: FLOCK  ADVISORY  WRITE 29682 fe:00:2147287 0 EOF"; waiters have "->" second
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file_id and fields[4].isdigit():
            return fields[4]
    return None


def _run_files(run_dir, owned):
    """{path relative to run_dir: bytes} of the run's files matching the `owned` patterns (what one
    command writes: checkpoint metas, not Saver files, which the metas name)."""
    files = {}
    for folder, _, names in os.walk(run_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), run_dir)
            if any(fnmatch.fnmatch(rel, pattern) for pattern in owned):
                with open(os.path.join(run_dir, rel), "rb") as f:
                    files[rel] = f.read()
    return files


def _put_back(run_dir, before, owned):
    """Return the run's `owned` files to `before` (see _run_files), drop checkpoint files no meta
    names and folders left empty."""
    for rel, content in _run_files(run_dir, owned).items():
        path = os.path.join(run_dir, rel)
        if rel not in before:
            os.remove(path)
            if rel.endswith(META_NAME):
                shutil.rmtree(os.path.dirname(path))  # a checkpoint kind first made by the failed command
        elif content != before[rel]:
            with open(path, "wb") as f:
                f.write(before[rel])
    remove_temp_files(run_dir)
    for folder, _, _ in sorted(os.walk(run_dir), reverse=True):
        if not os.listdir(folder) and os.path.relpath(folder, run_dir).split(os.sep)[0] in ("tb", "checkpoints"):
            os.rmdir(folder)
    if set(os.listdir(run_dir)) <= {".lock"}:
        shutil.rmtree(run_dir)


@contextlib.contextmanager
def unchanged_on_failure(run_dir, owned):
    """Run the block; if it fails before committing a new `last` checkpoint, put the run's files
    matching `owned` (relative fnmatch patterns: what the block writes) back as they were, and
    remove a run folder that held nothing else. A failure after a commit keeps the progress.
    Files of other commands (search, export, evaluate results) are never touched."""
    owned = tuple(owned) + ("checkpoints/*/" + META_NAME,)
    before = _run_files(run_dir, owned) if os.path.isdir(run_dir) else {}
    last_meta = os.path.join("checkpoints", "last", META_NAME)
    try:
        yield
    except BaseException:
        if os.path.isdir(run_dir) and _file_bytes(os.path.join(run_dir, last_meta)) == before.get(last_meta):
            _put_back(run_dir, before, owned)
        raise


def _file_bytes(path):
    """The file's bytes, or None where there is no file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def checkpoint_dir(run_dir, kind):
    """checkpoints/<kind> of a run; kind is 'best' or 'last'."""
    if kind not in CHECKPOINT_KINDS:
        raise CheckpointError(f"checkpoint type {kind!r} is not one of {', '.join(CHECKPOINT_KINDS)}")
    return os.path.join(run_dir, "checkpoints", kind)


def search_space_signature(input_h, input_w):
    """What a checkpoint must share with the graph that restores it: the search space's version
    (what an arch code means) and blocks, and the input size it was trained at."""
    return {"version": supernet.SPACE.version, "blocks": list(supernet.SPACE.blocks), "input_size": [input_h, input_w]}


def save(sess, saver, run_dir, kind, meta):
    """Save the session's variables as checkpoint `kind` with `meta`; returns the committed meta."""
    directory = checkpoint_dir(run_dir, kind)
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(directory, f"model-{meta['global_step']}-{time.time_ns()}")
    meta = dict(meta, checkpoint=os.path.basename(prefix))
    try:
        saver.save(sess, prefix, write_meta_graph=False, write_state=False)
        atomic_files.write_json_atomic(os.path.join(directory, META_NAME), meta)
    except (tf.errors.OpError, OSError, OutputError) as err:
        remove_uncommitted(directory)
        raise CheckpointError(f"cannot save checkpoint {prefix}: {one_line(err)}") from None
    remove_uncommitted(directory)
    return meta


def remove_uncommitted(directory):
    """Delete every Saver and temp file in a checkpoint folder that its committed meta does not
    name: older prefixes, a save that failed or was killed half-way (.tempstate files, an .index
    without its .data), a meta temp file."""
    try:
        meta = read_json(os.path.join(directory, META_NAME), "checkpoint meta")
        name = meta.get("checkpoint") if isinstance(meta, dict) else None
    except CheckpointError:
        name = None
    # no readable meta: its Saver files are kept for the user to look at; only temp files go
    committed = name + "." if isinstance(name, str) and name and os.path.basename(name) == name else None
    for path in glob.glob(os.path.join(directory, "model-*")) + glob.glob(os.path.join(directory, "*.tmp*")):
        stale = ".tempstate" in path or ".tmp" in os.path.basename(path) or (
            committed is not None and not os.path.basename(path).startswith(committed))
        if stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def remove_temp_files(run_dir):
    """Delete what writers killed in this run left behind: JSON and history temp files
    (`*.tmp<pid>`) and uncommitted checkpoint files. Only a writer holding the run's lock calls it."""
    for path in glob.glob(os.path.join(run_dir, "*.tmp*")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    for kind in CHECKPOINT_KINDS:
        if os.path.isdir(checkpoint_dir(run_dir, kind)):
            remove_uncommitted(checkpoint_dir(run_dir, kind))


META_FIELDS = {"checkpoint": str, "epoch": int, "global_step": int, "search_space": dict}


def check_meta(meta, path):
    """Raise CheckpointError naming `path` and the field unless `meta` is an object whose fields
    every reader relies on have their types, and `checkpoint` names a model-* file beside it."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, got {type(meta).__name__}")
    for field, kind in META_FIELDS.items():
        if field not in meta:
            raise CheckpointError(f"{path}: field '{field}' is missing")
        value = meta[field]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            wanted = "an integer >= 0" if kind is int else f"a JSON {'string' if kind is str else 'object'}"
            raise CheckpointError(f"{path}: field '{field}' must be {wanted}, got {value!r}")
    name = meta["checkpoint"]
    if os.path.basename(name) != name or not name.startswith("model-"):
        raise CheckpointError(f"{path}: field 'checkpoint' must name a model-* file beside it, got {name!r}")


def load_meta(run_dir, kind):
    """The committed meta of checkpoint `kind` (checked, see check_meta), with `prefix` (the Saver
    path) added."""
    directory = checkpoint_dir(run_dir, kind)
    path = os.path.join(directory, META_NAME)
    meta = read_json(path, f"'{kind}' checkpoint meta")
    check_meta(meta, path)
    prefix = os.path.join(directory, meta["checkpoint"])
    for suffix in (".index", ".data-00000-of-00001"):
        if not os.path.isfile(prefix + suffix):
            raise CheckpointError(f"'{kind}' checkpoint file missing: {prefix}{suffix}")
    return dict(meta, prefix=prefix)


def checkpoint_digest(run_dir, kind):
    """sha256 of checkpoint `kind`'s index and data files: the identity of its weights, which a run
    trained again by the same command on the same setting reproduces (training is deterministic)."""
    prefix, digest = load_meta(run_dir, kind)["prefix"], hashlib.sha256()
    for suffix in (".index", ".data-00000-of-00001"):
        with open(prefix + suffix, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_compatible(meta, input_h, input_w, where):
    """Raise CheckpointError unless the checkpoint was made with this search space (its version; a
    checkpoint made before versions existed is read by its blocks, options and kernels), and at
    this input size unless input_h and input_w are None: the network is fully convolutional, so
    scoring may run at any size; only resuming training needs the same one."""
    theirs = meta.get("search_space", {})
    legacy = supernet.SPACE.legacy_signature()
    if "version" in theirs or legacy is None or any(theirs.get(k) != v for k, v in legacy.items()):
        try:
            supernet.check_space_version(theirs.get("version"), f"checkpoint {where}")
        except ArchError as err:
            raise CheckpointError(str(err)) from None
    if input_h is not None and theirs.get("input_size") != [input_h, input_w]:
        raise CheckpointError(f"checkpoint {where} was made with input_size={theirs.get('input_size')}, "
                              f"this graph has {[input_h, input_w]}")


def check_variables(prefix, variables):
    """Raise CheckpointError unless the checkpoint at `prefix` is readable and holds every one of
    `variables` with its shape (a checkpoint may hold more, e.g. optimizer state)."""
    try:
        shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {prefix}: {one_line(err)}") from None
    for variable in variables:
        name, shape = variable.op.name, variable.shape.as_list()
        if name not in shapes:
            raise CheckpointError(f"checkpoint {prefix} lacks variable {name}")
        if list(shapes[name]) != shape:
            raise CheckpointError(f"checkpoint {prefix} holds {name} of shape {list(shapes[name])}, "
                                  f"this graph has {shape}")


def restore(sess, saver, run_dir, kind, input_h=None, input_w=None, variables=None):
    """Restore checkpoint `kind` of a run into the session after checking it fits: search space,
    input size if given (see check_compatible), and the shape of every one of `variables` (default:
    the graph's global variables, what the saver restores); returns its meta."""
    meta = load_meta(run_dir, kind)
    check_compatible(meta, input_h, input_w, meta["prefix"])
    if variables is None:
        variables = sess.graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    check_variables(meta["prefix"], variables)
    try:
        saver.restore(sess, meta["prefix"])
    except tf.errors.OpError as err:
        raise CheckpointError(f"cannot restore {meta['prefix']}: {one_line(err)}") from None
    return meta


def newest_run(output_dir, kind="last"):
    """The run folder under `output_dir` whose `kind` checkpoint was committed most recently."""
    metas = glob.glob(os.path.join(output_dir, "*", "checkpoints", kind, META_NAME))
    if not metas:
        raise CheckpointError(f"no experiment with a '{kind}' checkpoint under {output_dir}/")
    newest = max(metas, key=os.path.getmtime)
    return os.path.dirname(os.path.dirname(os.path.dirname(newest)))


@contextlib.contextmanager
def restored_session(run_dir, kind, build, input_size=None):
    """Build a graph with `build()` (which creates the supernet variables it needs and returns what
    the caller uses), open a session with the project's session config, restore checkpoint `kind`
    of the run into it (see restore; `input_size` (h, w), if given, must be the checkpoint's) and
    yield (sess, what build returned, the checkpoint meta). The session is not made the default, nor its
    graph: eager work may go on while it is open (a deployment keeps one open from its first
    conversion to its export)."""
    graph = tf.Graph()
    with graph.as_default():
        built = build()
        saver = tf.compat.v1.train.Saver(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
    graph.finalize()
    sess = tf.compat.v1.Session(graph=graph, config=tensorflow_quiet.session_config())
    try:
        with graph.as_default():  # the Saver restores in graph mode only there
            meta = restore(sess, saver, run_dir, kind, *(input_size or (None, None)))
        yield sess, built, meta
    finally:
        sess.close()
