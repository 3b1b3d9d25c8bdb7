"""The project's error classes, and the one way an entry point turns them into a one-line exit.

Every fault a user can cause (a bad flag, file, config, checkpoint, dataset, arch code, board
target) raises a subclass of EdgeFlowError whose message is one line naming the file, field, flag
or path. Entry points run their work through `exit_code`: such an error, or an OSError of the
environment (a full disk, a folder that cannot be written), prints one `error: ...` line and exits
1. Anything else (a bug here, in numpy or in TensorFlow) keeps its traceback. What the libraries
announce through `logging` (synthetic data in place of a dataset) is printed on stdout with the
command's own lines, so stderr holds errors alone.
"""
import argparse
import logging
import sys


class EdgeFlowError(Exception):
    """A fault of the user's input or environment; the message is one line naming what is wrong."""

    def __init__(self, message):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class ArchError(EdgeFlowError):
    """A malformed arch code, or a search space of another version."""


class ConfigError(EdgeFlowError):
    """A bad config file, key, value or flag."""


class CheckpointError(EdgeFlowError):
    """A missing, unreadable or incompatible checkpoint or run folder."""


class DataError(EdgeFlowError):
    """A missing or damaged dataset file, or data that cannot be used as asked."""


class DeviceError(EdgeFlowError):
    """Devices asked for that cannot be used; the message says why and what to do."""


class OutputError(EdgeFlowError):
    """An output that cannot be written: a full disk, a folder that cannot be written, a non-finite number."""


class TrainingError(EdgeFlowError):
    """Training cannot go on (a non-finite loss); the run resumes from its last checkpoint."""


class SearchError(EdgeFlowError):
    """A bad search flag, arch list, part, unit or search folder."""


class CompileError(EdgeFlowError):
    """The edge compiler is missing, refuses a model, or its output cannot be read; or a bad target."""


class ExportError(EdgeFlowError):
    """A failed conversion, a bad latency or memory table, or an export that cannot be written."""


class RankError(EdgeFlowError):
    """Bad input to the ranking study: a run, file or flag."""


class DeployError(EdgeFlowError):
    """Nothing fits the board as asked, or a deployment input is bad."""


class RefineError(EdgeFlowError):
    """Bad input to the refine stage: a search or deployment to take candidates from, a flag, a
    refinement folder made from other weights."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose refusals are one `error: ...` line (exit code 2, as argparse's),
    not the usage block before it: every command and library CLI parses its flags with it."""

    def error(self, message):
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        sys.exit(2)


_TF_NOISE = ("Graph execution error", "Detected at node", "File ", "Node:", "[[", "Hint:", "defined at")


def one_line(err):
    """A TensorFlow error's message on one line: its reason, without the graph trace around it (the
    first line alone may say only 'Graph execution error:')."""
    lines = [line.strip() for line in str(getattr(err, "message", err)).splitlines() if line.strip()]
    return " ".join([line for line in lines if not line.startswith(_TF_NOISE)] or lines)


def os_error_line(err):
    """An OSError as one line naming its path: 'cannot write PATH: No space left on device'."""
    path = err.filename or "a file"
    return f"cannot use {path}: {err.strerror or err}"


class _Announcements(logging.Handler):
    """Library log records as plain lines on the current stdout (pytest swaps sys.stdout)."""

    def emit(self, record):
        print(self.format(record), flush=True)


def exit_code(action, *args):
    """Run an entry point's action(*args): an EdgeFlowError or an OSError becomes one `error: ...`
    line on stderr and exit code 1; success is 0."""
    root = logging.getLogger()
    if not any(isinstance(h, _Announcements) for h in root.handlers):
        root.addHandler(_Announcements())
    try:
        action(*args)
    except EdgeFlowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 1
    return 0
