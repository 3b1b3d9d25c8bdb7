"""Atomic file writes, without TensorFlow: a file is written whole via a temp file and a rename,
or not at all, and the temps of a killed writer are found and removed.

A temp file is `<path>.tmp<pid>`, so a writer that was killed is told from one still writing by
its process id.
"""
import contextlib
import ctypes
import errno
import glob
import json
import os
import shutil

from errors import OutputError


def write_atomic(path, content):
    """Write bytes or text to `path` via a temp file, fsync and rename: never a half-written file.
    A failed write (a full disk, a folder that is not there) removes its temp file and raises
    OutputError naming `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


def write_json_atomic(path, obj):
    """Write `obj` as strict JSON to `path` atomically (see write_atomic): never NaN or Infinity
    (an OutputError naming the file)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError as err:
        raise OutputError(f"{path}: not written: {err}") from None
    return write_atomic(path, text)


def remove_killed_temps(pattern):
    """Delete the files and folders matching `pattern` that are `<name>.tmp<pid>` temps (write_atomic's
    form) of a process that is gone: what a killed writer left. A live process's temps stay."""
    for path in glob.glob(pattern):
        pid = path.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _process_alive(pid):
    """Whether a process with this PID exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != 0


AT_FDCWD, RENAME_EXCHANGE = -100, 2  # renameat2(2): paths relative to the working folder; swap the two names


def _exchange(first, second):
    """Swap two existing paths in one step (Linux's renameat2 with RENAME_EXCHANGE): True if done,
    False where the C library or the file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), second)


def replace_folder(work, folder):
    """Put the finished folder `work` in place of `folder` (a folder or nothing) and remove the old
    one. Where the kernel can swap the two names in one step, a process killed at any instant
    leaves `folder` whole, the old or the new; elsewhere the old is first renamed aside (to
    `<work>.tmp<pid>`, what remove_killed_temps of `<folder>.tmp*` removes), and a process killed
    between the two renames leaves no `folder`."""
    if not os.path.isdir(folder):
        os.rename(work, folder)
        return
    if _exchange(work, folder):
        shutil.rmtree(work)
        return
    aside = f"{work}.tmp{os.getpid()}"
    os.rename(folder, aside)
    os.rename(work, folder)
    shutil.rmtree(aside)
