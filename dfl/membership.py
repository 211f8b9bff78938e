"""Membership over time: nodes join, leave (with notice) and fail (unresponsive, without notice).

A schedule is a comma-separated list of `ROUND:EVENT:AMOUNT` items, e.g.

    "50:fail:0.8"            from round 50, 80% of the nodes active then are unresponsive
    "30:join:10,60:leave:5"  10 nodes join at round 30; 5 active nodes leave at round 60

EVENT is `join`, `leave` or `fail`. AMOUNT is a count (an integer, "10") or a fraction of the
nodes active at that round (a number with a decimal point in (0, 1], "0.8"); `join` takes a
count only. Events apply in round order (items of one round in the order written).

`num_nodes` counts every node that ever takes part: the nodes that join later are the last ids
and sit idle (never sampled, never communicating) until they join, so data shards, models and
the node axis keep one shape for the whole run. Per node the schedule fixes three rounds:

    listed_t[i]     = listed_from[i] <= t < left_at[i]    (in the candidate lists L_t)
    answers_t[i]    = t < failed_at[i]                    (has not failed by round t)
    responsive_t[i] = listed_t[i] and answers_t[i]
    candidate_t[i]  = listed_t[i] and t < failed_at[i] + R   (R = inactivity rounds; R = 0: never)

A node joining at round r is listed from round r + 1 (eligible from the next round). A node that
leaves at round r announced it, so L_r no longer lists it. A node failing at round r stays
listed (nobody was told) but no longer answers, until it has been silent for R rounds (MoDeST's
inactivity threshold, accdfl/core/peer_manager.py of the reference): from round r + R on it is
no candidate. Which active nodes leave or fail is drawn from
`seed`, so a run is fully determined by its config. The masks are evaluated inside jit from
these small static arrays: rounds never recompile.
"""
from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

EVENTS = ("join", "leave", "fail")
NEVER = np.iinfo(np.int32).max
_ITEM = re.compile(r"^\s*(\d+)\s*:\s*([a-z]+)\s*:\s*([0-9.]+)\s*$")


class Event(NamedTuple):
  round: int
  kind: str  # join | leave | fail
  count: int | None  # absolute number of nodes, or
  fraction: float | None  # fraction of the nodes active at `round`


def parse_schedule(schedule: str) -> tuple[Event, ...]:
  """Parses "ROUND:EVENT:AMOUNT,..." (see the module docstring); "" is no event."""
  events = []
  for item in filter(None, (s.strip() for s in schedule.split(","))):
    match = _ITEM.match(item)
    if not match:
      raise ValueError(f"Bad membership item {item!r} in {schedule!r}: expected ROUND:EVENT:AMOUNT "
                       f"such as '50:fail:0.8' or '30:join:10'.")
    rnd, kind, amount = int(match[1]), match[2], match[3]
    if kind not in EVENTS:
      raise ValueError(f"Unknown membership event {kind!r} in {item!r}; valid: {list(EVENTS)}.")
    if "." in amount:
      fraction = float(amount)
      if kind == "join" or not 0 < fraction <= 1:
        raise ValueError(f"Membership item {item!r}: " + (
            "'join' takes a count of new nodes (an integer)." if kind == "join" else
            f"a fraction must be in (0, 1], got {fraction}."))
      events.append(Event(rnd, kind, None, fraction))
    else:
      count = int(amount)
      if count < 1:
        raise ValueError(f"Membership item {item!r}: the count must be >= 1, got {count}.")
      events.append(Event(rnd, kind, count, None))
  return tuple(sorted(events, key=lambda e: e.round))  # stable: same-round order kept


@dataclasses.dataclass(frozen=True)
class Membership:
  """Per-node event rounds (numpy int32 [N]); NEVER where the event does not happen."""
  listed_from: np.ndarray
  left_at: np.ndarray
  failed_at: np.ndarray

  @property
  def num_nodes(self) -> int:
    return len(self.listed_from)

  def listed(self, t) -> jnp.ndarray:
    """[N] bool: nodes in the candidate list of round t (joined, not left). Traceable in t."""
    return (jnp.asarray(self.listed_from) <= t) & (t < jnp.asarray(self.left_at))

  def candidates(self, t, inactivity_rounds: int = 0) -> jnp.ndarray:
    """[N] bool: `listed(t)` less the failed nodes silent for `inactivity_rounds` rounds (failing
    at round f, a node last answered in round f - 1 and is dropped from round f + R); R = 0:
    failed nodes stay listed forever. Traceable in t."""
    if not inactivity_rounds:
      return self.listed(t)
    return self.listed(t) & (t - inactivity_rounds < jnp.asarray(self.failed_at))

  def answers(self, t) -> jnp.ndarray:
    """[N] bool: nodes that have not failed by round t. Traceable in t."""
    return t < jnp.asarray(self.failed_at)

  def responsive(self, t) -> jnp.ndarray:
    """[N] bool: listed nodes that still answer at round t."""
    return self.listed(t) & self.answers(t)

  def active_at(self, t: int) -> np.ndarray:
    """Host-side responsive mask (numpy), for checks and experiment scripts."""
    return (self.listed_from <= t) & (t < self.left_at) & (t < self.failed_at)


def static_membership(num_nodes: int) -> Membership:
  zeros, never = np.zeros(num_nodes, np.int32), np.full(num_nodes, NEVER, np.int32)
  return Membership(zeros, never, never.copy())


def build_membership(num_nodes: int, events: tuple[Event, ...] | str, *,
                     seed: int = 0) -> Membership:
  """Resolves a schedule into per-node rounds; raises ValueError when it cannot be applied.

  Joining nodes are taken from the last ids in order; the nodes that leave or fail are drawn
  uniformly (from `seed`) among those active at the event's round.
  """
  if isinstance(events, str):
    events = parse_schedule(events)
  joiners = sum(e.count for e in events if e.kind == "join")
  if joiners >= num_nodes:
    raise ValueError(f"The membership schedule adds {joiners} joining nodes but num_nodes="
                     f"{num_nodes} counts every node that ever takes part: the initial population "
                     f"would be {num_nodes - joiners}. Raise num_nodes.")
  listed_from = np.zeros(num_nodes, np.int32)
  listed_from[num_nodes - joiners:] = NEVER
  left_at = np.full(num_nodes, NEVER, np.int32)
  failed_at = np.full(num_nodes, NEVER, np.int32)
  rng = np.random.default_rng(seed)
  next_joiner = num_nodes - joiners
  for e in events:
    if e.kind == "join":
      listed_from[next_joiner:next_joiner + e.count] = e.round + 1
      next_joiner += e.count
      continue
    active = np.flatnonzero((listed_from <= e.round) & (e.round < left_at) & (e.round < failed_at))
    count = e.count if e.count is not None else int(round(e.fraction * len(active)))
    if count > len(active):
      raise ValueError(f"Membership event {e.round}:{e.kind}:{e.count} needs {count} active nodes "
                       f"at round {e.round}, but only {len(active)} are active then.")
    chosen = rng.choice(active, size=count, replace=False)
    (left_at if e.kind == "leave" else failed_at)[chosen] = e.round
  membership = Membership(listed_from, left_at, failed_at)
  for e in events:  # the protocol needs one node that answers, at every event and after it
    for t in (e.round, e.round + 1):
      if not membership.active_at(t).any():
        raise ValueError(f"The membership schedule leaves no responsive node at round {t} "
                         f"(after event {e.round}:{e.kind}); keep at least one node active.")
  return membership
