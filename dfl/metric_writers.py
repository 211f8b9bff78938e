"""Where a run's evaluation records go: metrics.jsonl always, TensorBoard when asked.

The driver hands every evaluation record (a flat dict with a `round` key) to one writer; the
JSON-lines file is the record of truth that `launch.report` reads, TensorBoard is for watching
runs (a whole sweep: `tensorboard --logdir SWEEP_ROOT`) while they go. Event files are written
with tensorboardX, which needs only numpy and protobuf (no TensorFlow); it is the optional extra
`pip install -e ".[tensorboard]"`.
"""
from __future__ import annotations

import json
import os
from typing import Protocol

TENSORBOARD_SUBDIR = "tensorboard"


class MetricWriter(Protocol):
  def write(self, record: dict) -> None: ...
  def close(self) -> None: ...


class JsonlWriter:
  """One JSON object per line, flushed at once so a killed run keeps every record written."""

  def __init__(self, path: str, mode: str = "w"):
    self._file = open(path, mode)

  def write(self, record: dict) -> None:
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class TensorBoardWriter:
  """Every numeric field of a record as a scalar at step = record['round'].

  purge_step: a resumed run restarts at its checkpoint's round, so the rounds the killed run
  logged after it are logged again. TensorBoard hides the older events at steps >= purge_step
  (a purge event at the start of the new file), as metrics.jsonl is rewound to the checkpoint.
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    try:
      from tensorboardX import SummaryWriter
    except ImportError as e:
      raise ImportError("logging.tensorboard=True needs tensorboardX (no TensorFlow): "
                        "pip install -e \".[tensorboard]\" (or pip install tensorboardX).") from e
    # A resumed run's file is named after its round: event file names are only unique per
    # second and host, and a same-named file would be overwritten.
    suffix = f".from_round_{purge_step}" if purge_step else ""
    self._writer = SummaryWriter(logdir, purge_step=purge_step, filename_suffix=suffix)

  def write(self, record: dict) -> None:
    step = int(record["round"])
    for name, value in record.items():
      if name != "round" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self._writer.add_scalar(name, value, global_step=step)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MultiWriter:
  def __init__(self, writers: list):
    self.writers = writers

  def write(self, record: dict) -> None:
    for w in self.writers:
      w.write(record)

  def close(self) -> None:
    for w in self.writers:
      w.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def make_metric_writer(workdir: str, *, tensorboard: bool = False, mode: str = "w",
                       resume_round: int = 0) -> MultiWriter:
  """metrics.jsonl in `workdir` (mode 'a' to continue a resumed run), plus TensorBoard events
  under workdir/tensorboard/ when `tensorboard` is set; `resume_round` > 0 purges the
  TensorBoard events of rounds >= it that an interrupted run left behind."""
  writers = [JsonlWriter(os.path.join(workdir, "metrics.jsonl"), mode)]
  if tensorboard:
    writers.append(TensorBoardWriter(os.path.join(workdir, TENSORBOARD_SUBDIR),
                                     purge_step=resume_round or None))
  return MultiWriter(writers)
