"""Communication schedules: one topology most of the time, another at chosen rounds.

From Zhu et al., "A Single Merging Suffices: Recovering Server-based Learning Performance in
Decentralized Learning" (2025): sparse gossip throughout and one global merge (complete graph,
W = 11^T / N) at the final round recovers server-based accuracy; spending the communication
budget late (a dense window near the end) beats spending it early.

* `final_merge`: the dense topology in the last round only.
* `dense_window`: the dense topology in the last `window` rounds.
"""
from __future__ import annotations

import dataclasses
import functools
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
      schedule=schedule)


def schedule_rounds(schedule: str, num_rounds: int | None, window: int) -> range:
  """The dense rounds of a named schedule over a run of `num_rounds` rounds."""
  if schedule not in SCHEDULES:
    raise ValueError(f"Unknown topology.schedule={schedule!r}; valid: {list(SCHEDULES)}.")
  if num_rounds is None or num_rounds < 1:
    raise ValueError(f"topology.schedule={schedule!r} needs the run's length: num_rounds >= 1 "
                     f"(the driver passes train.rounds), got {num_rounds}.")
  if schedule == "final_merge":
    return range(num_rounds - 1, num_rounds)
  if not 1 <= window <= num_rounds:
    raise ValueError(f"topology.schedule='dense_window' needs 1 <= schedule_window <= "
                     f"num_rounds={num_rounds}, got schedule_window={window}.")
  return range(num_rounds - window, num_rounds)
