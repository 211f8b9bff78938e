"""The system model's pieces for one experiment (called by dfl/experiment.py).

`build(config, ...)` returns None when `system.enabled` is False: then nothing below changes the
run. Otherwise it holds the SystemModel (async_gossip's tick resolved), each node's samples per
round and its per-round seconds T_i on the round-0 graph (async_gossip's periods).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from dfl.algorithms import DPSGD_LOCAL_STEPS, DEFAULT_LOCAL_STEPS, ONE_GRADIENT_PER_ROUND
from dfl.system import deadline as deadline_lib
from dfl.system.model import SystemModel, build_system, node_seconds, samples_per_round

# Algorithms whose local_steps default to one step per round (None in the config).
ONE_STEP_DEFAULT = {"dpsgd", "choco", "push_sum", "gradient_tracking"} | ONE_GRADIENT_PER_ROUND


@dataclasses.dataclass(frozen=True)
class SystemSetup:
  model: SystemModel
  samples_N: np.ndarray  # [N] samples read in a round the node trains
  node_seconds_N: np.ndarray  # [N] T_i: local phase + sending to its round-0 neighbours


def out_degrees(topology) -> np.ndarray:
  """[N] models each node sends per gossip step on the round-0 graph (off-diagonal nonzeros of
  its column of W)."""
  indices_NxK, weights_NxK = topology.neighbors(0)
  n = indices_NxK.shape[0]
  edge_NxK = (np.asarray(weights_NxK) != 0) & (indices_NxK != np.arange(n)[:, None])
  sent_N = np.zeros(n, np.int64)
  np.add.at(sent_N, indices_NxK[edge_NxK], 1)
  return sent_N


def build(config, shard_sizes, topology, model_bytes: int, seed: int) -> Optional[SystemSetup]:
  model = build_system(config.get("system"), config.num_nodes, seed, int(config.train.rounds))
  if model is None:
    return None
  a = config.algorithm
  default = DPSGD_LOCAL_STEPS if a.name in ONE_STEP_DEFAULT else DEFAULT_LOCAL_STEPS
  samples_N = samples_per_round(a, shard_sizes, default)
  seconds_N = node_seconds(model, samples_N, out_degrees(topology), model_bytes)
  if a.name == "async_gossip" and model.tick_seconds == 0:
    model = dataclasses.replace(model, tick_seconds=float(seconds_N.min()))
  return SystemSetup(model, samples_N, seconds_N)


def hooked(setup: Optional[SystemSetup]) -> bool:
  """Whether the round hook of dfl/system/deadline.py is needed: a deadline or availability."""
  return setup is not None and (setup.model.deadline > 0 or setup.model.online_RxN is not None)


def mixer(setup: Optional[SystemSetup], config, inner):
  """The gossip step under a deadline or availability (the inner mixer, None for plain gossip,
  otherwise)."""
  if not hooked(setup):
    return inner
  if config.algorithm.name not in deadline_lib.GOSSIP_FAMILY:
    return inner
  return deadline_lib.deadline_mixer(inner)


def wrap(setup: Optional[SystemSetup], config, algorithm, model_bytes: int):
  """The algorithm with its round deadline and offline nodes (unchanged without either)."""
  if not hooked(setup):
    return algorithm
  kind = "server" if config.algorithm.name in deadline_lib.SERVER_FAMILY else "gossip"
  return deadline_lib.with_deadline(algorithm, kind, setup.model, setup.samples_N, model_bytes)
