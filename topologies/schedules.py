"""Communication schedules: one topology most of the time, another at chosen rounds.

From Zhu et al., "A Single Merging Suffices: Recovering Server-based Learning Performance in
Decentralized Learning" (2025): sparse gossip throughout and one global merge (complete graph,
W = 11^T / N) at the final round recovers server-based accuracy; spending the communication
budget late (a dense window near the end) beats spending it early.

* `final_merge`: the dense topology in the last round only (the reference's `truncate` with
  point1 at the last round).
* `dense_window`: the dense topology in `window` consecutive rounds, by default the last ones;
  `start` places the window anywhere: a round index, or a fraction of the run in [0, 1) as
  `point1` of the reference's `truncate_v2` (the window opens at the first round t with
  t >= point1 * num_rounds), and the base topology resumes after it.

Reference: github.com/Raiden-Zhu/ICLR-2026-Grokking-in-Decentralized-Learning, core/communication.py
(`compute_r`: `truncate`, `truncate_v2`). Deviation: the reference sizes its window as a fraction
of the run (`window_size`); here `window` counts rounds.

In a schedule's dense rounds every algorithm mixes with the dense topology's own W (complete:
W = 11^T / N, an exact average), also those with their own mixing rule on the base graph (gossip
learning); algorithms that ignore the topology (fedavg, fedsam, modest) refuse a schedule.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterable

from topologies.topology import Topology

SCHEDULES = ("none", "final_merge", "dense_window")


@dataclasses.dataclass(eq=False)
class ScheduledTopology(Topology):
  """`base` in every round except `dense_rounds`, which use `dense`."""
  base: Topology = None
  dense: Topology = None
  schedule: str = "custom"

  @functools.cached_property
  def neighbor_width(self) -> int:
    return max(self.base.neighbor_width, self.dense.neighbor_width)

  def sample_rounds(self) -> range:
    return self.base.sample_rounds()

  def expected_matrix(self):
    return self.base.expected_matrix()

  def properties(self) -> dict:
    """The base graph's properties (spectral gap of the sparse phase) plus the schedule."""
    props = self.base.properties()
    rounds = self.dense_rounds
    props.update(
        name=self.name, time_varying=True, neighbor_width=self.neighbor_width,
        schedule=self.schedule, dense_topology=self.dense.name,
        dense_rounds=f"{rounds[0]}..{rounds[-1]}" if len(rounds) > 1 else str(rounds[0]),
        dense_spectral_gap=self.dense.properties()["spectral_gap"])
    return props


def scheduled(base: Topology, dense: Topology, rounds: Iterable[int], *,
              schedule: str = "custom") -> ScheduledTopology:
  """Uses `dense` in the given rounds (0-based) and `base` in all others."""
  dense_rounds = tuple(sorted(set(int(t) for t in rounds)))
  if not dense_rounds or dense_rounds[0] < 0:
    raise ValueError(f"A schedule needs a nonempty set of rounds >= 0, got {dense_rounds}.")
  if base.num_nodes != dense.num_nodes:
    raise ValueError(f"Scheduled topologies differ in size: {base.num_nodes} vs {dense.num_nodes}.")
  chosen = frozenset(dense_rounds)

  def matrix_fn(t):
    return dense.matrix(t) if t in chosen else base.matrix(t)

  return ScheduledTopology(
      f"{base.name}+{schedule}:{dense.name}", base.num_nodes, matrix_fn, time_varying=True,
      directed=base.directed or dense.directed, num_rounds=base.num_rounds,
      description=base.description, base=base, dense=dense, dense_rounds=dense_rounds,
      schedule=schedule, column_stochastic=base.column_stochastic and dense.column_stochastic)


def window_start(start: float, num_rounds: int, window: int) -> int:
  """The first dense round of a window placed at `start` (a round, or a fraction in [0, 1))."""
  if start < 0 or (start >= 1 and start != int(start)):
    raise ValueError(f"topology.schedule_start must be a round index (an integer >= 1) or a "
                     f"fraction of the run in [0, 1), got {start}.")
  # The first round t with t / num_rounds >= start (a little slack for 0.9 * 10 = 9.000...02).
  first = int(start) if start >= 1 else math.ceil(start * num_rounds - 1e-9)
  if first + window > num_rounds:
    raise ValueError(f"topology.schedule_start={start} puts the dense window at rounds "
                     f"{first}..{first + window - 1}, past the run's last round {num_rounds - 1}; "
                     f"valid: schedule_start + schedule_window <= num_rounds={num_rounds}.")
  return first


def schedule_rounds(schedule: str, num_rounds: int | None, window: int,
                    start: float | None = None) -> range:
  """The dense rounds of a named schedule over a run of `num_rounds` rounds; `start` (dense_window
  only): the window's first round, or its position as a fraction of the run; None: at the end."""
  if schedule not in SCHEDULES:
    raise ValueError(f"Unknown topology.schedule={schedule!r}; valid: {list(SCHEDULES)}.")
  if num_rounds is None or num_rounds < 1:
    raise ValueError(f"topology.schedule={schedule!r} needs the run's length: num_rounds >= 1 "
                     f"(the driver passes train.rounds), got {num_rounds}.")
  if start is not None and schedule != "dense_window":
    raise ValueError(f"topology.schedule_start={start} places a dense window, but "
                     f"topology.schedule={schedule!r}; use schedule='dense_window' or leave "
                     "schedule_start unset.")
  if schedule == "final_merge":
    return range(num_rounds - 1, num_rounds)
  if not 1 <= window <= num_rounds:
    raise ValueError(f"topology.schedule='dense_window' needs 1 <= schedule_window <= "
                     f"num_rounds={num_rounds}, got schedule_window={window}.")
  first = num_rounds - window if start is None else window_start(start, num_rounds, window)
  return range(first, first + window)
