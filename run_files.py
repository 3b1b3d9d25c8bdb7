"""What a training run writes besides the Saver's files, in one place: train.log, TensorBoard
events, eval_history.csv (appended and fsynced, kept across resume), config.json, the eval pool,
the checkpoints' metas, fairness_counts.json and train_report.json."""
import csv
import io
import math
import os
import time

from tensorflow_quiet import tf

import atomic_files
import ckpt
import fair
import flowviz
import supernet
from errors import CheckpointError


def make_logger(path):
    """log(msg, echo=True): print (unless echo is False) and append to train.log, flushed, so a
    killed run keeps every line."""
    def log(msg, echo=True):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        if echo:
            print(line, flush=True)
        with open(path, "a") as f:
            f.write(line + "\n")
    return log


def history_columns(pool):
    """eval_history.csv columns: run figures then one EPE column per pool arch."""
    return (["epoch", "global_step", "mean_epe", "std_epe", "zero_flow_epe", "best_epe", "bad_epochs", "train_loss",
             "clip_rate", "lr", "fairness_gap", "eval_seconds", "wall_time_s"]
            + [f"epe_{supernet.format_arch(a).replace(',', '')}" for a in pool])


def read_history(path, columns):
    """The rows of eval_history.csv (none if it does not exist), each checked: its columns, an
    integer epoch and numbers (or nothing) elsewhere; a CheckpointError naming the file and line otherwise."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except (OSError, ValueError, csv.Error) as err:  # ValueError: not UTF-8
        raise CheckpointError(f"{path}: cannot be read as a history: {err}") from None
    if rows and reader.fieldnames != columns:
        raise CheckpointError(f"{path}: columns {reader.fieldnames} are not this run's {columns}")
    for line, row in enumerate(rows, 2):
        if not (row["epoch"] or "").isdigit() or None in row.values() or None in row or not all(
                _number_or_empty(v) for k, v in row.items() if k != "epoch"):
            raise CheckpointError(f"{path}:{line}: not an evaluation row of this run: {row['epoch']!r}...")
    return rows


def _number_or_empty(text):
    """True for an empty field or a number that is not NaN (what a history row holds)."""
    try:
        return text == "" or not math.isnan(float(text))
    except ValueError:
        return False


def trim_history(path, last_epoch, columns):
    """Drop rows written after the last checkpoint (a run killed between its evaluation and its
    checkpoint redoes that epoch on resume; a fresh start keeps none); every earlier row is kept."""
    rows = read_history(path, columns)
    kept = [r for r in rows if int(r["epoch"]) <= last_epoch]
    if len(kept) != len(rows):
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(kept)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            f.write(text.getvalue())
        os.replace(tmp, path)


def write_scalars(writer, step, scalars):
    """TensorBoard scalars {tag: value} at `step` (plain Summary protos: no TensorBoard package needed)."""
    values = [tf.compat.v1.Summary.Value(tag=t, simple_value=float(v)) for t, v in scalars.items()]
    summary = tf.compat.v1.Summary(value=values)
    writer.add_summary(summary, step)
    writer.flush()


def write_image(writer, step, tag, png, height, width):
    """One TensorBoard image (PNG bytes, RGBA) at `step`."""
    image = tf.compat.v1.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
    writer.add_summary(tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(tag=tag, image=image)]), step)
    writer.flush()


RUN_FILES = ("config.json", "train.log", "eval_history.csv", "eval_pool_*.json", "fairness_counts.json",
             "train_report.json", "tb/*")  # what RunWriter writes (checkpoints aside), relative to the run


class RunWriter:
    """Everything a run writes besides the Saver's files, in one place: train.log, TensorBoard,
    eval_history.csv, config.json, the eval pool, the checkpoints' metas, fairness_counts.json and
    train_report.json (RUN_FILES)."""
    writes_files = True  # unlike distribute.WorkerLog

    def __init__(self, run_dir, columns):
        self.run_dir, self.columns = run_dir, columns  # eval_history.csv's (history_columns)
        self.history = os.path.join(run_dir, "eval_history.csv")
        self.log = make_logger(os.path.join(run_dir, "train.log"))
        self.tb = None

    def start(self, cfg, pool, coverage, state, lines):
        """Start (or resume) writing: config, eval pool, the history cut back to `state`, the plan."""
        atomic_files.write_json_atomic(os.path.join(self.run_dir, "config.json"), cfg)
        atomic_files.write_json_atomic(os.path.join(self.run_dir, f"eval_pool_{len(pool)}.json"),
                                       {"mode": "standalone" if cfg["arch"] else "supernet", "seed": cfg["seed"],
                                        "size": len(pool), "archs": [supernet.format_arch(a) for a in pool],
                                        "coverage": coverage})
        trim_history(self.history, state.epoch, self.columns)
        self.write_counts(state)
        for line in lines:
            self.log(line)
        tb = os.path.join(self.run_dir, "tb")
        if os.path.exists(tb) and not os.path.isdir(tb):
            raise CheckpointError(f"{tb}: must be the run's TensorBoard folder, and is a file")
        with tf.Graph().as_default():
            self.tb = tf.compat.v1.summary.FileWriter(tb)

    def write_counts(self, state):
        """fairness_counts.json: the counts of `state`, i.e. of the last checkpoint."""
        atomic_files.write_json_atomic(os.path.join(self.run_dir, "fairness_counts.json"),
                                       {"global_step": state.global_step, "counts": state.fairness_counts,
                                        "fairness_gap": fair.fairness_gap(state.fairness_counts)})

    def training(self, step, out, clip_rate):
        """TensorBoard scalars of a progress line."""
        distill = {"train/distillation": out["distill"]} if "distill" in out else {}
        write_scalars(self.tb, step, {"train/loss": out["loss"], "train/lr": out["lr"], "train/clip_rate": clip_rate,
                                      "train/grad_norm": out["grad_norm"], **distill})

    def evaluation(self, step, row, result, val_batches):
        """One evaluation: its history row (flushed to disk), TensorBoard scalars and flow panel."""
        new = not os.path.exists(self.history)
        with open(self.history, "a", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            if new:
                writer.writeheader()
            writer.writerow(dict(row, **{c: r["epe"] for c, r in zip(self.columns[-len(result["archs"]):],
                                                                      result["archs"])}))
            f.flush()
            os.fsync(f.fileno())
        write_scalars(self.tb, step, {"eval/mean_epe": result["mean_epe"],
                                      **{f"eval/epe/{r['arch']}": r["epe"] for r in result["archs"]}})
        write_image(self.tb, step, "eval/flow_best_arch", *flowviz.best_arch_panel(result, val_batches))

    def checkpoint(self, sess, saver, state, meta_fields, best):
        """Commit the epoch: `best` if it improved, then `last`, then the counts that match it."""
        meta = dict(state.to_meta(), **meta_fields)
        if best:
            ckpt.save(sess, saver, self.run_dir, "best", meta)
        ckpt.save(sess, saver, self.run_dir, "last", meta)
        self.write_counts(state)

    def finish(self, report):
        """train_report.json and the closing log line."""
        self.tb.close()
        path = os.path.join(self.run_dir, "train_report.json")
        atomic_files.write_json_atomic(path, report)
        self.log(f"done: {report['stop_reason']} after {report['epochs_finished']} epochs, best pool EPE "
                 f"{report['best_metric']} at epoch {report['best_epoch']}; report {path}")
