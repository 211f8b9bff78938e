"""Registry: algorithm name -> builder(algorithm_config, context) -> Algorithm.

The builders are the only place that reads the `algorithm` config section; the factories they
call take explicit keyword arguments. A new algorithm is a new file plus one entry here.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import numpy as np

from dfl.algorithms.base import Algorithm, RoundInputs, RoundMetrics
from dfl.algorithms.dfedavg import dfedavg
from dfl.algorithms.dpsgd import dpsgd
from dfl.algorithms.fedavg import fedavg
from dfl.algorithms.gossip import gossip_learning


class BuildContext(NamedTuple):
  loss_fn: Callable  # loss(params, x, y) for one node's minibatch
  num_nodes: int
  shard_sizes: np.ndarray  # [N] samples per node
  mixer: Optional[Callable] = None  # None: plain gossip; else e.g. variance-corrected mixing


def _momentum(a, default: float) -> float:
  return default if a.momentum is None else float(a.momentum)


def _dfedavg(a, ctx: BuildContext) -> Algorithm:
  if _momentum(a, 0.0) != 0.0:
    raise ValueError(f"algorithm.name='dfedavg' is plain local SGD but algorithm.momentum="
                     f"{a.momentum}; use algorithm.name='dfedavgm' for local momentum.")
  return dfedavg(ctx.loss_fn, lr=a.lr, local_steps=a.local_steps, batch_size=a.batch_size,
                 weight_decay=a.weight_decay, lr_decay=a.lr_decay, mixer=ctx.mixer)


def _dfedavgm(a, ctx: BuildContext) -> Algorithm:
  momentum = _momentum(a, 0.9)
  if not 0.0 < momentum < 1.0:
    raise ValueError(f"algorithm.name='dfedavgm' needs 0 < algorithm.momentum < 1, got {momentum}.")
  return dfedavg(ctx.loss_fn, lr=a.lr, local_steps=a.local_steps, batch_size=a.batch_size,
                 momentum=momentum, weight_decay=a.weight_decay, lr_decay=a.lr_decay,
                 mixer=ctx.mixer)


def _dpsgd(a, ctx: BuildContext) -> Algorithm:
  return dpsgd(ctx.loss_fn, lr=a.lr, batch_size=a.batch_size, momentum=_momentum(a, 0.0),
               weight_decay=a.weight_decay, lr_decay=a.lr_decay, mixer=ctx.mixer)


def _fedavg(a, ctx: BuildContext) -> Algorithm:
  return fedavg(ctx.loss_fn, num_nodes=ctx.num_nodes, lr=a.lr, local_steps=a.local_steps,
                batch_size=a.batch_size, client_fraction=a.client_fraction,
                momentum=_momentum(a, 0.0), weight_decay=a.weight_decay, lr_decay=a.lr_decay)


def _gossip(a, ctx: BuildContext) -> Algorithm:
  return gossip_learning(ctx.loss_fn, lr=a.lr, local_steps=a.local_steps, batch_size=a.batch_size,
                         self_weight=a.self_weight, momentum=_momentum(a, 0.0),
                         weight_decay=a.weight_decay, lr_decay=a.lr_decay, mixer=ctx.mixer)


ALGORITHMS: dict[str, Callable[..., Algorithm]] = {
    "dpsgd": _dpsgd,
    "dfedavg": _dfedavg,
    "dfedavgm": _dfedavgm,
    "fedavg": _fedavg,
    "gossip": _gossip,
}

# Algorithms that communicate over the topology's graph (the others ignore W).
USES_TOPOLOGY = {"dpsgd", "dfedavg", "dfedavgm", "gossip"}


def build_algorithm(algorithm_config, ctx: BuildContext) -> Algorithm:
  name = algorithm_config.name
  if name not in ALGORITHMS:
    raise ValueError(f"Unknown algorithm.name={name!r}; valid: {sorted(ALGORITHMS)}.")
  return ALGORITHMS[name](algorithm_config, ctx)


__all__ = ["Algorithm", "RoundInputs", "RoundMetrics", "BuildContext", "ALGORITHMS",
           "USES_TOPOLOGY", "build_algorithm"]
