"""Node availability over time: which nodes are online in each round (`system.availability`).

Forms (`parse_availability`):

    "none"                          every node online in every round (the default)
    "markov:p_fail=F,p_recover=R"   per node a two-state on/off Markov chain stepped once per
                                    round: every node is online in round 0; an online node goes
                                    offline for the next round with probability F, an offline
                                    one comes back with probability R (a two-state on/off
                                    Markov chain in the manner of Gilbert's 1960 channel model,
                                    applied to nodes; mean online spell 1/F rounds, offline
                                    spell 1/R, stationary online share R/(F+R)). Draws: numpy's
                                    default_rng([system seed, AVAILABILITY_STREAM]), one uniform
                                    per (round, node) in row-major order, so a longer run extends
                                    a shorter one's table.
    "trace:PATH.csv"                online intervals per device (format below).

Trace format (one header line, `#` comment lines allowed):

    device,start_round,end_round
    0,0,40
    0,55,200
    1,10,200

A device is online in round t when start_round <= t < end_round for one of its rows (half-open
intervals in ROUNDS; rows in any order, several per device). Node i uses the device at position
i mod D of the D distinct device ids sorted, as the device trace reader does
(dfl/system/traces.py). The time axis is rounds, not simulated seconds, because a round's
simulated start time is only known after the rounds before it ran (FedAvg samples its clients on
device, and who is offline changes the rounds' durations), while the online table must be fixed
before the compiled rounds run.

The [R, N] table (`availability_table`) is computed on the host from the config alone, before the
run: the round deadline hook (dfl/system/deadline.py) holds it as a program constant and treats
an offline node as a late node in drop mode (it neither trains nor sends: its update is dropped,
its neighbours' weight on it moves to their own model), and the clock (dfl/system/clock.py) waits
for online nodes only and reports `offline_fraction`. A resumed run recomputes the same table.

The bundled example experiments/traces/availability.csv is written by
experiments/traces/make_device_trace.py --availability (a markov draw turned into intervals).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from dfl.errors import UserError
from dfl.system.traces import csv_rows, resolve_path

FORMS = ('"none"', '"markov:p_fail=F,p_recover=R"', '"trace:PATH.csv"')
AVAILABILITY_STREAM = 7  # the rng stream of the markov draws, apart from the node fields' 0..2
TRACE_COLUMNS = ("device", "start_round", "end_round")


@dataclasses.dataclass(frozen=True)
class Availability:
  kind: str  # none | markov | trace
  args: tuple  # () | (p_fail, p_recover) | (path,)


def _bad(spec, why: str) -> UserError:
  return UserError(f"system.availability={spec!r}: {why}; valid forms: {', '.join(FORMS)}.")


def parse_availability(spec) -> Availability:
  """Parses `system.availability`; raises UserError naming the field, the value and the forms."""
  if not isinstance(spec, str) or not spec.strip():
    raise _bad(spec, "expected a non-empty string")
  text = spec.strip()
  if text == "none":
    return Availability("none", ())
  kind, colon, rest = text.partition(":")
  kind = kind.strip()
  if not colon:
    raise _bad(spec, f"unknown form {text!r}")
  if kind == "trace":
    if not rest.strip():
      raise _bad(spec, "trace: needs a file path")
    return Availability("trace", (rest.strip(),))
  if kind == "markov":
    kwargs = {}
    for part in rest.split(","):
      key, eq, value = (s.strip() for s in part.partition("="))
      if not eq or key not in ("p_fail", "p_recover") or key in kwargs:
        raise _bad(spec, "markov takes p_fail=F,p_recover=R")
      try:
        kwargs[key] = float(value)
      except ValueError:
        raise _bad(spec, f"{key}={value!r} is not a number") from None
      if not (math.isfinite(kwargs[key]) and 0.0 <= kwargs[key] <= 1.0):
        raise _bad(spec, f"{key}={value} must be a probability in [0, 1]")
    if set(kwargs) != {"p_fail", "p_recover"}:
      raise _bad(spec, "markov takes p_fail=F,p_recover=R")
    return Availability("markov", (kwargs["p_fail"], kwargs["p_recover"]))
  raise _bad(spec, f"unknown form {kind!r}")


def markov_table(p_fail: float, p_recover: float, num_nodes: int, rounds: int,
                 seed: int) -> np.ndarray:
  """[rounds, N] bool online: round 0 all online, then per round
  online -> offline if u < p_fail, offline -> online if u < p_recover (u ~ U(0, 1))."""
  u_RxN = np.random.default_rng([seed, AVAILABILITY_STREAM]).random((rounds, num_nodes))
  online_RxN = np.ones((rounds, num_nodes), bool)
  for t in range(1, rounds):
    prev_N = online_RxN[t - 1]
    online_RxN[t] = np.where(prev_N, u_RxN[t] >= p_fail, u_RxN[t] < p_recover)
  return online_RxN


def read_intervals(path: str) -> dict[int, list[tuple[int, int]]]:
  """{device: [(start_round, end_round), ...]}; raises UserError naming the file, row, column."""
  path = resolve_path(path)
  rows = csv_rows(path, "system.availability trace file")
  header = [h.strip() for h in rows[0]] if rows else []
  if sorted(header) != sorted(TRACE_COLUMNS):
    raise UserError(f"availability trace {path!r}: header {header}; expected the columns "
                    f"{list(TRACE_COLUMNS)} (online intervals [start_round, end_round)).")
  if len(rows) < 2:
    raise UserError(f"availability trace {path!r} has a header but no rows.")
  intervals: dict[int, list[tuple[int, int]]] = {}
  for number, row in enumerate(rows[1:], start=1):
    if len(row) != len(header):
      raise UserError(f"availability trace {path!r}, data row {number}: {len(row)} fields, the "
                      f"header has {len(header)}.")
    cells = {h: c.strip() for h, c in zip(header, row)}
    try:
      values = {h: int(cells[h]) for h in TRACE_COLUMNS}
    except ValueError:
      raise UserError(f"availability trace {path!r}, data row {number}: {row}; every column must "
                      "be an integer.") from None
    if not 0 <= values["start_round"] < values["end_round"] or values["device"] < 0:
      raise UserError(f"availability trace {path!r}, data row {number}: {row}; need device >= 0 "
                      "and 0 <= start_round < end_round.")
    intervals.setdefault(values["device"], []).append((values["start_round"],
                                                      values["end_round"]))
  return intervals


def trace_table(path: str, num_nodes: int, rounds: int) -> np.ndarray:
  """[rounds, N] bool online from an interval trace: node i uses device i mod D (sorted ids)."""
  intervals = read_intervals(path)
  devices = sorted(intervals)
  online_RxN = np.zeros((rounds, num_nodes), bool)
  t_R = np.arange(rounds)
  for i in range(num_nodes):
    for start, end in intervals[devices[i % len(devices)]]:
      online_RxN[:, i] |= (start <= t_R) & (t_R < end)
  return online_RxN


def availability_table(spec, num_nodes: int, rounds: int, seed: int):
  """[rounds, N] bool online table of `system.availability`, None for "none"."""
  a = parse_availability(spec)
  if a.kind == "none":
    return None
  if a.kind == "markov":
    return markov_table(a.args[0], a.args[1], num_nodes, rounds, seed)
  return trace_table(a.args[0], num_nodes, rounds)
