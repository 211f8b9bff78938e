"""Registry: algorithm name -> builder(algorithm_config, context) -> Algorithm.

The builders are the only place that reads the `algorithm` config section; the factories they
call take explicit keyword arguments. A new algorithm is a new file plus one entry here.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import numpy as np

from dfl.algorithms.base import Algorithm, RoundInputs, RoundMetrics
from dfl.algorithms.dfedavg import dfedavg
from dfl.algorithms.dfedsam import dfedsam
from dfl.algorithms.dfedsam_mgs import PAPER_GOSSIP_STEPS, dfedsam_mgs
from dfl.algorithms.dpsgd import dpsgd
from dfl.algorithms.fedavg import fedavg
from dfl.algorithms.fedsam import fedsam
from dfl.algorithms.gossip import gossip_learning
from dfl.algorithms.modest import modest
from dfl.membership import build_membership


class BuildContext(NamedTuple):
  loss_fn: Callable  # loss(params, x, y) for one node's minibatch
  num_nodes: int
  shard_sizes: np.ndarray  # [N] samples per node
  mixer: Optional[Callable] = None  # None: plain gossip; else e.g. variance-corrected mixing
  seed: int = 0  # for choices made when building (which nodes leave or fail in MoDeST)
  merge_rounds: tuple = ()  # a schedule's dense rounds: mixed with the topology's W as given


def _momentum(a, default: float) -> float:
  return default if a.momentum is None else float(a.momentum)


def local_work(a, shard_sizes: np.ndarray) -> tuple[int, Optional[np.ndarray]]:
  """(K, per-node steps or None): K = local_steps, or with E = local_epochs > 0 each node i takes
  E * ceil(n_i / batch_size) steps and K is their maximum (the scan length; shorter nodes mask)."""
  if not a.local_epochs:
    return a.local_steps, None
  steps_N = a.local_epochs * -(-np.asarray(shard_sizes, np.int64) // a.batch_size)
  if np.all(steps_N == steps_N[0]):  # equal shards: no masking needed
    return int(steps_N[0]), None
  return int(steps_N.max()), steps_N.astype(np.int32)


def _gossip_steps(a, default: int) -> int:
  return default if a.gossip_steps is None else int(a.gossip_steps)


def _dfedavg(a, ctx: BuildContext) -> Algorithm:
  if _momentum(a, 0.0) != 0.0:
    raise ValueError(f"algorithm.name='dfedavg' is plain local SGD but algorithm.momentum="
                     f"{a.momentum}; use algorithm.name='dfedavgm' for local momentum.")
  k, steps_N = local_work(a, ctx.shard_sizes)
  return dfedavg(ctx.loss_fn, lr=a.lr, local_steps=k, batch_size=a.batch_size,
                 weight_decay=a.weight_decay, lr_decay=a.lr_decay, mixer=ctx.mixer,
                 num_steps_N=steps_N)


def _dfedavgm(a, ctx: BuildContext) -> Algorithm:
  momentum = _momentum(a, 0.9)
  if not 0.0 < momentum < 1.0:
    raise ValueError(f"algorithm.name='dfedavgm' needs 0 < algorithm.momentum < 1, got {momentum}.")
  k, steps_N = local_work(a, ctx.shard_sizes)
  return dfedavg(ctx.loss_fn, lr=a.lr, local_steps=k, batch_size=a.batch_size,
                 momentum=momentum, weight_decay=a.weight_decay, lr_decay=a.lr_decay,
                 mixer=ctx.mixer, num_steps_N=steps_N)


def _dfedsam(a, ctx: BuildContext) -> Algorithm:
  if _gossip_steps(a, 1) != 1:
    raise ValueError(f"algorithm.name='dfedsam' gossips once per round but algorithm."
                     f"gossip_steps={a.gossip_steps}; use algorithm.name='dfedsam_mgs' for Q > 1.")
  k, steps_N = local_work(a, ctx.shard_sizes)
  return dfedsam(ctx.loss_fn, lr=a.lr, rho=a.rho, local_steps=k, batch_size=a.batch_size,
                 momentum=_momentum(a, 0.0), weight_decay=a.weight_decay, lr_decay=a.lr_decay,
                 mixer=ctx.mixer, num_steps_N=steps_N)


def _dfedsam_mgs(a, ctx: BuildContext) -> Algorithm:
  k, steps_N = local_work(a, ctx.shard_sizes)
  return dfedsam_mgs(ctx.loss_fn, lr=a.lr, rho=a.rho, local_steps=k, batch_size=a.batch_size,
                     gossip_steps=_gossip_steps(a, PAPER_GOSSIP_STEPS),
                     momentum=_momentum(a, 0.0), weight_decay=a.weight_decay,
                     lr_decay=a.lr_decay, mixer=ctx.mixer, num_steps_N=steps_N)


def _dpsgd(a, ctx: BuildContext) -> Algorithm:
  return dpsgd(ctx.loss_fn, lr=a.lr, batch_size=a.batch_size, momentum=_momentum(a, 0.0),
               weight_decay=a.weight_decay, lr_decay=a.lr_decay, mixer=ctx.mixer)


def _fedavg(a, ctx: BuildContext) -> Algorithm:
  k, steps_N = local_work(a, ctx.shard_sizes)
  return fedavg(ctx.loss_fn, num_nodes=ctx.num_nodes, lr=a.lr, local_steps=k,
                batch_size=a.batch_size, client_fraction=a.client_fraction,
                momentum=_momentum(a, 0.0), weight_decay=a.weight_decay, lr_decay=a.lr_decay,
                num_steps_N=steps_N, aggregation_weights=a.aggregation_weights)


def _fedsam(a, ctx: BuildContext) -> Algorithm:
  k, steps_N = local_work(a, ctx.shard_sizes)
  return fedsam(ctx.loss_fn, num_nodes=ctx.num_nodes, lr=a.lr, rho=a.rho, local_steps=k,
                batch_size=a.batch_size, client_fraction=a.client_fraction,
                momentum=_momentum(a, 0.0), weight_decay=a.weight_decay, lr_decay=a.lr_decay,
                num_steps_N=steps_N)


def _gossip(a, ctx: BuildContext) -> Algorithm:
  return gossip_learning(ctx.loss_fn, lr=a.lr, local_steps=a.local_steps, batch_size=a.batch_size,
                         self_weight=a.self_weight, momentum=_momentum(a, 0.0),
                         weight_decay=a.weight_decay, lr_decay=a.lr_decay, mixer=ctx.mixer,
                         merge_rounds=ctx.merge_rounds,
                         aggregation_weights=a.aggregation_weights)


def _modest(a, ctx: BuildContext) -> Algorithm:
  sample_size = min(10, ctx.num_nodes) if a.sample_size is None else a.sample_size  # paper: 10
  k, steps_N = local_work(a, ctx.shard_sizes)
  return modest(ctx.loss_fn, num_nodes=ctx.num_nodes, lr=a.lr, local_steps=k,
                batch_size=a.batch_size, sample_size=sample_size, aggregators=a.aggregators,
                success_fraction=a.success_fraction,
                membership=build_membership(ctx.num_nodes, a.membership, seed=ctx.seed),
                momentum=_momentum(a, 0.0), weight_decay=a.weight_decay, lr_decay=a.lr_decay,
                num_steps_N=steps_N, min_models=a.min_models,
                inactivity_rounds=a.inactivity_rounds)


ALGORITHMS: dict[str, Callable[..., Algorithm]] = {
    "dpsgd": _dpsgd,
    "dfedavg": _dfedavg,
    "dfedavgm": _dfedavgm,
    "dfedsam": _dfedsam,
    "dfedsam_mgs": _dfedsam_mgs,
    "fedavg": _fedavg,
    "fedsam": _fedsam,
    "gossip": _gossip,
    "modest": _modest,
}

# Algorithms that communicate over the topology's graph (the others ignore W).
USES_TOPOLOGY = {"dpsgd", "dfedavg", "dfedavgm", "dfedsam", "dfedsam_mgs", "gossip"}

# Algorithms whose rounds may repeat gossip (algorithm.gossip_steps = Q).
USES_GOSSIP_STEPS = {"dfedsam", "dfedsam_mgs"}


def build_algorithm(algorithm_config, ctx: BuildContext) -> Algorithm:
  name = algorithm_config.name
  if name not in ALGORITHMS:
    raise ValueError(f"Unknown algorithm.name={name!r}; valid: {sorted(ALGORITHMS)}.")
  return ALGORITHMS[name](algorithm_config, ctx)


__all__ = ["Algorithm", "RoundInputs", "RoundMetrics", "BuildContext", "ALGORITHMS",
           "USES_TOPOLOGY", "USES_GOSSIP_STEPS", "build_algorithm", "local_work"]
