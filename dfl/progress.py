"""Progress of a long run: a tqdm bar on a terminal, plain lines in a log file.

A bar redrawn with carriage returns turns a log file into one line of several kilobytes, so
when stderr is not a terminal (a batch job, a sweep's run.log) an update prints one line, at
most every `min_interval` seconds (and always at the last round):

    dfedavg/ring: round 120/200 (60%), 4.1 rounds/s, acc=0.9312, loss=0.2210
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


class PlainProgress:
  """The part of tqdm's interface the drivers use, printing one line per update."""

  def __init__(self, *, total: int, initial: int = 0, desc: str = "", disable: bool = False,
               file=None, min_interval: float = 10.0):
    self.total, self.n, self.desc, self.disable = total, initial, desc, disable
    self.file = file or sys.stderr
    self.min_interval = min_interval
    self._start, self._start_n = time.perf_counter(), initial
    self._last_print = -float("inf")

  def update(self, n: int = 1) -> None:
    self.n += n

  def set_postfix(self, **values) -> None:
    """Prints the line (the drivers call this once per evaluation, after update)."""
    now = time.perf_counter()
    if self.disable or (now - self._last_print < self.min_interval and self.n < self.total):
      return
    self._last_print = now
    rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
    extra = "".join(f", {k}={v}" for k, v in values.items())
    print(f"{self.desc}: round {self.n}/{self.total} ({100 * self.n / self.total:.0f}%), "
          f"{rate:.2f} rounds/s{extra}", file=self.file, flush=True)

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def progress_bar(*, total: int, initial: int = 0, desc: str = "", disable: bool = False):
  """tqdm on a terminal, PlainProgress otherwise (both write to stderr)."""
  if sys.stderr.isatty():
    return tqdm(total=total, initial=initial, unit="round", dynamic_ncols=True, desc=desc,
                disable=disable)
  return PlainProgress(total=total, initial=initial, desc=desc, disable=disable)
