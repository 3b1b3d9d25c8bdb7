"""The one door TensorFlow comes in by: `from tensorflow_quiet import tf`, loaded on first use and
its start-up noise held back; and the session config every session uses.

`tf` is a stand-in that imports TensorFlow the first time one of its attributes is read, so a
command parses its flags, prints its help and refuses bad input before TensorFlow loads (about
20 s and 700 MiB). Loading sets TF_CPP_MIN_LOG_LEVEL to 2 (no info or warning lines) unless the
user set it, and holds back what the C++ side writes to stderr while TensorFlow loads and looks for
devices: absl's "All log messages before absl::InitializeLog()", oneDNN and CPU-feature notes,
"Could not find cuda drivers", "failed call to cuInit". Those lines come before the log level is
read or bypass it, so only holding them back removes them; a user who set the level to 2 or 3 asked
for quiet too, so they are held back unless the level is 0. They are kept, not lost: a failed
import prints them, and devices.report() quotes the relevant one when nvidia-smi lists a GPU that
TensorFlow cannot use.
"""
import contextlib
import os
import sys
import tempfile

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LOG_LEVEL = "2"  # errors only; the start-up errors of a machine without CUDA are held back
USER_LOG_LEVEL = os.environ.get(LOG_LEVEL_VARIABLE)  # set by the user: TensorFlow's levels speak as they asked
STARTUP_LINES = []  # what TensorFlow wrote to stderr while it was held back


def holding_back():
    """Whether TensorFlow's C++ lines are held back: unless the user asked for every line (level 0)."""
    return (USER_LOG_LEVEL or "").strip() != "0"


@contextlib.contextmanager
def quiet(kept=None, replay=True):
    """Inside: what this process writes to file descriptor 2 (TensorFlow's C++ side, absl, the
    TFLite converter) goes to a temp file, whose lines join `kept` (a list, if given); if the block
    raises they are written out after all, unless `replay` is off (the caller reports the failure
    on one line). A no-op when the user set TF_CPP_MIN_LOG_LEVEL to 0."""
    if not holding_back():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            if kept is not None:
                kept.extend(text.splitlines())
            if failed and replay:
                sys.stderr.write(text)


def child_environment():
    """This process's environment for a child entry point: without the log level this module set
    (inherited, the child would take it for the user's and let TensorFlow's start-up noise through)."""
    env = dict(os.environ)
    if USER_LOG_LEVEL is None:
        env.pop(LOG_LEVEL_VARIABLE, None)
    return env


def _import_tensorflow():
    """tensorflow, imported with the log level set and its start-up lines (the import's and the
    device search's) held back."""
    if USER_LOG_LEVEL is None:
        os.environ[LOG_LEVEL_VARIABLE] = QUIET_LOG_LEVEL
    try:
        with quiet(STARTUP_LINES):
            import tensorflow as module  # the one import of TensorFlow
            module.config.list_physical_devices()
    except ModuleNotFoundError as error:  # a command run with a Python outside the environment
        sys.exit(f"{error.name} is not installed for {sys.executable}: `make venv`, then run .venv/bin/python")
    if (USER_LOG_LEVEL or QUIET_LOG_LEVEL).strip() in ("2", "3"):  # errors only: its Python warnings too
        module.get_logger().setLevel("ERROR")  # (deprecation notices of the TF1 API it still ships)
    return module


class _TensorFlowOnFirstUse:
    """Stands for the tensorflow module: the first attribute read imports it (see _import_tensorflow)."""

    _module = None

    def __getattr__(self, name):
        if _TensorFlowOnFirstUse._module is None:
            _TensorFlowOnFirstUse._module = _import_tensorflow()
        return getattr(_TensorFlowOnFirstUse._module, name)


tf = _TensorFlowOnFirstUse()


def session_config():
    """The ConfigProto of every training and scoring session: Grappler's graph rewrites off. With
    them on, two runs of one seed differ in the last bits of the weights shared by the three
    paths from the first step on (the rewritten graph is not the same from one session to the
    next); with them off every run of a seed is identical, and a fair step is no slower here."""
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    logical = tf.config.get_logical_device_configuration(tf.config.list_physical_devices("CPU")[0])
    if logical and len(logical) > 1:  # the logical devices of devices.path_devices: a session has them if asked
        config.device_count["CPU"] = len(logical)
    return config
