"""The virtual clock of synchronous rounds, kept on the host like `dfl.train.CommCounter`.

`SimClock.add(metrics)` turns each round's per-node metrics (`RoundMetrics.sent_N`,
`received_N`, `message_bytes`, and `trained_N` / `aggregator_N` / `late_N` where an algorithm
or the deadline hook reports them) into the round's simulated duration and sums them
(`sim_seconds` in metrics.jsonl); the compiled rounds do not change for it.

Per node i (dfl/system/model.py): c_i = samples_i / s_i, the local phase (samples_i: the samples
it reads this round, K*B for K steps of batch B); u_i(m) = l_i + m * bytes / b_i, sending m
messages over its uplink (0 when m = 0). A node computes, then sends all its messages of the
round; T_i = c_i + u_i(sent_i).

  gossip family (dpsgd, dfedavg, dfedsam, gossip, choco, ... and algorithms named by import
  path): every node trains (or those in `trained_N`), a round ends when the slowest is done:

      round = max_i T_i         (identical nodes on a ring: K*B/s + l + 2 * bytes / b)

    With Q gossip steps per round (dfedsam_mgs) the latency is paid Q times: u_i = Q l_i + ...
  fedavg / fedsam: the sampled clients k (trained_N) compute and upload one model; the server
    then broadcasts the new model to the m clients over its own uplink (b_S, l_S):

      round = max_k (c_k + l_k + bytes / b_k) + l_S + m * bytes / b_S

  modest: the participants j (trained_N: those whose model was delivered) compute and upload to
    the U_j aggregators other than themselves, arriving at A_j = c_j + u_j(U_j) (an aggregator's
    own model is there at c_j). Aggregator i proceeds at the q-th arrival it sees,
    q = max(1, floor(sf * s)) (all arrivals when fewer were delivered), once its own uploads
    are out, and sends x^{k+1} to its D_i receivers:

      round = max_i [max(q-th arrival at i, own upload done) + u_i(D_i)]

  async_gossip: each round is one tick of `tick_seconds` (its nodes keep their own clocks
    inside the compiled program, dfl/algorithms/async_gossip.py).

With a deadline D (system.deadline_seconds > 0): a gossip round lasts min(D, max_i T_i) and a
FedAvg round min(D, max_k(...)) + the broadcast; the late nodes (`late_N`, decided on device by
dfl/system/deadline.py from the same T_i) are reported as `dropped_update_fraction`, the late
updates over the updates due (trained nodes) in the evaluation period.

Availability (system.availability, dfl/system/availability.py): the clock holds the run's
[R, N] online table; in round t an offline node neither trains nor sends (its compute and
upload count 0, so no round waits for it) and its update is not due; `offline_fraction` is the
mean over the evaluation period's rounds of the fraction of nodes offline.

Per-round compute jitter (system.compute_jitter = sigma > 0): c_i of round t is multiplied by
compute_factors(fold_in(train_key, t))_i, recomputed here from the run's key.

Deviations / simplifications: one latency per round per sending node (messages to several
neighbours share it, as if pipelined); no contention at receivers (downlinks are unlimited);
MoDeST's timeout is not modelled (a round with fewer than q deliveries waits for all of them),
and with sf < 1 the clock counts the q fastest arrivals while the compiled aggregation uses a
random q of the delivered models (identical at the default sf = 1); control messages (MoDeST's
probes) take no time; the FedAvg server's broadcast counts the receivers the algorithm reports,
offline clients included.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import numpy as np

from dfl.system.model import SystemModel, compute_factors

SERVER_ALGORITHMS = {"fedavg", "fedsam"}


def rule_of(algorithm_name: str) -> str:
  if algorithm_name in SERVER_ALGORITHMS:
    return "server"
  if algorithm_name == "modest":
    return "modest"
  if algorithm_name == "async_gossip":
    return "ticks"
  return "gossip"


def _upload(system: SystemModel, count_N, message_bytes: float, exchanges: int = 1):
  count_N = np.asarray(count_N, np.float64)
  return np.where(count_N > 0, exchanges * system.latency_N
                  + count_N * message_bytes / system.bandwidth_N, 0.0)


def gossip_round(system: SystemModel, samples_N, sent_N, message_bytes: float,
                 trained_N=None, exchanges: int = 1, deadline: float = 0.0) -> float:
  trained_N = np.ones(system.num_nodes, bool) if trained_N is None else np.asarray(trained_N, bool)
  compute_N = np.where(trained_N, np.asarray(samples_N, np.float64) / system.samples_per_second_N,
                       0.0)
  total = float(np.max(compute_N + _upload(system, sent_N, message_bytes, exchanges)))
  return min(deadline, total) if deadline > 0 else total


def server_round(system: SystemModel, samples_N, sent_N, received_N, message_bytes: float,
                 trained_N, deadline: float = 0.0) -> float:
  trained_N = np.asarray(trained_N, bool)
  compute_N = np.asarray(samples_N, np.float64) / system.samples_per_second_N
  up_N = np.where(trained_N, compute_N + _upload(system, sent_N, message_bytes), 0.0)
  uploads = float(np.max(up_N, initial=0.0))
  if deadline > 0:
    uploads = min(deadline, uploads)
  receivers = int(np.sum(received_N))
  broadcast = (system.server_latency + receivers * message_bytes / system.server_bandwidth
               if receivers else 0.0)
  return uploads + broadcast


def modest_round(system: SystemModel, samples_N, sent_N, message_bytes: float, trained_N,
                 aggregator_N, quorum: int) -> float:
  trained_N, aggregator_N = np.asarray(trained_N, bool), np.asarray(aggregator_N, bool)
  sent_N = np.asarray(sent_N, np.int64)
  num_agg = int(aggregator_N.sum())
  compute_N = np.asarray(samples_N, np.float64) / system.samples_per_second_N
  uploads_N = np.where(trained_N, num_agg - aggregator_N.astype(np.int64), 0)
  upload_done_N = compute_N + _upload(system, uploads_N, message_bytes)
  participants = np.flatnonzero(trained_N)
  if num_agg == 0:
    return float(np.max(upload_done_N[participants], initial=0.0))
  end = 0.0
  for i in np.flatnonzero(aggregator_N):
    arrivals = np.sort(np.where(participants == i, compute_N[participants],
                                upload_done_N[participants]))
    ready = float(arrivals[min(quorum, len(arrivals)) - 1]) if len(arrivals) else 0.0
    if trained_N[i]:
      ready = max(ready, float(upload_done_N[i]))
    downloads = int(sent_N[i] - uploads_N[i])
    send = (system.latency_N[i] + downloads * message_bytes / system.bandwidth_N[i]
            if downloads > 0 else 0.0)
    end = max(end, ready + float(send))
  return end


class SimClock:
  """Cumulative simulated seconds on the host (float64, summed round by round in order, so a
  resumed run adds the same numbers in the same order and ends bit-identical).

  Args:
    system: the run's SystemModel.
    algorithm: algorithm.name (picks the rule, module docstring).
    samples_N: [N] samples a node reads in a round it trains.
    model_bytes: bytes of one model (a round's messages weigh `message_bytes` when given).
    quorum: MoDeST's q = max(1, floor(sf * s)).
    exchanges: gossip steps per round Q (latencies paid per round).
    train_key: the run's training key; with system.compute_jitter > 0, round t's compute times
      are scaled by compute_factors(fold_in(train_key, t)), the factors the round saw on device.
  """

  def __init__(self, system: SystemModel, algorithm: str, samples_N, model_bytes: int, *,
               quorum: int = 1, exchanges: int = 1, train_key=None):
    self.system = system
    self.rule = rule_of(algorithm)
    self.samples_N = np.asarray(samples_N, np.float64)
    self.model_bytes = int(model_bytes)
    self.quorum = int(quorum)
    self.exchanges = int(exchanges)
    self.seconds = 0.0
    self.rounds = 0  # rounds counted (the next round's index)
    self.train_key = train_key
    if system.compute_jitter > 0 and train_key is None:
      raise ValueError("system.compute_jitter > 0 needs the run's train_key for the clock.")
    if system.compute_jitter > 0:
      n, sigma = system.num_nodes, system.compute_jitter
      self._factors = jax.jit(lambda key, t: compute_factors(jax.random.fold_in(key, t), n, sigma))
    self.late = 0  # late updates, cumulative
    self.due = 0  # updates due (nodes that trained), cumulative
    self.period_late = 0
    self.period_due = 0
    self.period_offline = 0  # offline (round, node) pairs in the period
    self.period_rounds = 0

  def round_seconds(self, sent_N, received_N, message_bytes, trained_N=None,
                    aggregator_N=None) -> float:
    """The duration of one round from its metrics (module docstring)."""
    s, b = self.system, float(self.model_bytes if message_bytes is None else message_bytes)
    if self.rule == "ticks":
      return s.tick_seconds
    if self.rule == "server":
      return server_round(s, self.samples_N, sent_N, received_N, b, trained_N, s.deadline)
    if self.rule == "modest":
      return modest_round(s, self.samples_N, sent_N, b, trained_N, aggregator_N, self.quorum)
    return gossip_round(s, self.samples_N, sent_N, b, trained_N, self.exchanges, s.deadline)

  def add(self, metrics) -> None:
    n = self.system.num_nodes
    sent_RxN = np.asarray(metrics.sent_N, np.int64).reshape(-1, n)
    received_RxN = np.asarray(metrics.received_N, np.int64).reshape(-1, n)
    rounds = sent_RxN.shape[0]

    def per_round(x, dtype):
      return None if x is None else np.asarray(x, dtype).reshape(rounds, n)
    trained_RxN = per_round(getattr(metrics, "trained_N", None), bool)
    aggregator_RxN = per_round(getattr(metrics, "aggregator_N", None), bool)
    late_RxN = per_round(getattr(metrics, "late_N", None), bool)
    bytes_R = (None if metrics.message_bytes is None
               else np.broadcast_to(np.asarray(metrics.message_bytes, np.int64), (rounds,)))
    samples_N = self.samples_N
    table_RxN = self.system.online_RxN
    online_RxN = np.ones((rounds, n), bool)
    if table_RxN is not None:  # offline nodes neither train nor send
      # the rows the device read (its gather clamps past the table's end)
      online_RxN = table_RxN[np.minimum(self.rounds + np.arange(rounds), len(table_RxN) - 1)]
      trained_RxN = online_RxN if trained_RxN is None else trained_RxN & online_RxN
      sent_RxN = np.where(online_RxN, sent_RxN, 0)
    for r in range(rounds):
      if self.system.compute_jitter > 0:  # this round's compute factors, as on device
        self.samples_N = samples_N * np.asarray(self._factors(self.train_key, self.rounds),
                                                np.float64)
      self.seconds += self.round_seconds(
          sent_RxN[r], received_RxN[r], None if bytes_R is None else int(bytes_R[r]),
          None if trained_RxN is None else trained_RxN[r],
          None if aggregator_RxN is None else aggregator_RxN[r])
      self.rounds += 1
    self.samples_N = samples_N
    self.period_due = int(rounds * n if trained_RxN is None else trained_RxN.sum())
    self.period_late = 0 if late_RxN is None else int(late_RxN.sum())
    self.due += self.period_due
    self.period_offline = int((~online_RxN).sum())
    self.period_rounds = rounds
    self.late += self.period_late

  def as_dict(self) -> dict:
    record = {"sim_seconds": self.seconds}
    if self.system.deadline > 0:
      record["dropped_update_fraction"] = (self.period_late / self.period_due
                                           if self.period_due else 0.0)
    if self.system.online_RxN is not None:
      pairs = self.period_rounds * self.system.num_nodes
      record["offline_fraction"] = self.period_offline / pairs if pairs else 0.0
    return record

  def state_dict(self) -> dict:
    return {"seconds": self.seconds.hex(), "rounds": self.rounds, "late": self.late,
            "due": self.due,
            "period_late": self.period_late, "period_due": self.period_due,
            "period_offline": self.period_offline, "period_rounds": self.period_rounds}

  def load_state_dict(self, saved: dict) -> None:
    self.seconds = float.fromhex(saved["seconds"])
    self.rounds = int(saved["rounds"])
    self.late, self.due = int(saved["late"]), int(saved["due"])
    self.period_late, self.period_due = int(saved["period_late"]), int(saved["period_due"])
    self.period_offline = int(saved.get("period_offline", 0))
    self.period_rounds = int(saved.get("period_rounds", 0))


def modest_quorum(success_fraction: float, sample_size: int) -> int:
  return max(1, math.floor(success_fraction * sample_size))


def make_clock(exp) -> Optional[SimClock]:
  """The clock of a built Experiment (None when its system model is off)."""
  system = getattr(exp, "system", None)
  if system is None:
    return None
  a, n = exp.config.algorithm, exp.config.num_nodes
  quorum = 1
  if a.name == "modest":
    quorum = modest_quorum(a.success_fraction, min(10, n) if a.sample_size is None
                           else a.sample_size)
  exchanges = 1
  if a.name == "dfedsam_mgs":
    from dfl.algorithms.dfedsam_mgs import PAPER_GOSSIP_STEPS
    exchanges = PAPER_GOSSIP_STEPS if a.gossip_steps is None else int(a.gossip_steps)
  return SimClock(system, a.name, exp.samples_N, exp.model_bytes, quorum=quorum,
                  exchanges=exchanges, train_key=exp.train_key)
