"""Registry: algorithm name -> builder(algorithm_config, context) -> Algorithm.

The builders are the only place that reads the `algorithm` config section; the factories they
call take explicit keyword arguments. A new algorithm is a new file plus one entry here, or,
outside the library, a builder named by import path (`algorithm.name="my_pkg.algos:build"`).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import numpy as np

from dfl.aggregation.compressors import make_compressor
from dfl.algorithms.base import Algorithm, RoundInputs, RoundMetrics
from dfl.algorithms.choco import choco
from dfl.algorithms.dfedavg import dfedavg
from dfl.algorithms.dfedsam import dfedsam
from dfl.algorithms.dfedsam_mgs import PAPER_GOSSIP_STEPS, dfedsam_mgs
from dfl.algorithms import async_gossip as _async_gossip_module
from dfl.algorithms import exact_diffusion as _exact_diffusion_module
from dfl.algorithms import gradient_tracking as _gradient_tracking_module
from dfl.algorithms import qgm as _qgm_module
from dfl.algorithms.dpsgd import dpsgd
from dfl.algorithms.fedavg import fedavg
from dfl.algorithms.fedsam import fedsam
from dfl.algorithms.gossip import gossip_learning
from dfl.algorithms.modest import modest
from dfl.algorithms.push_sum import push_sum
from dfl.errors import UserError
from dfl.imports import is_import_path, resolve
from dfl.membership import build_membership


class BuildContext(NamedTuple):
  loss_fn: Callable  # loss(params, x, y, mask) for one node's minibatch (mean over valid lanes)
  num_nodes: int
  shard_sizes: np.ndarray  # [N] samples per node
  mixer: Optional[Callable] = None  # None: plain gossip; else e.g. variance-corrected mixing
  seed: int = 0  # for choices made when building (which nodes leave or fail in MoDeST)
  merge_rounds: tuple = ()  # a schedule's dense rounds: mixed with the topology's W as given
  augment: Optional[Callable] = None  # augment(key, x_B) -> x_B on every local minibatch
  # The system model's per-node seconds of one local phase plus sending to the neighbours
  # (dfl/system), and the tick of async_gossip (0: the fastest node's); None without one.
  node_seconds: Optional[np.ndarray] = None
  tick_seconds: float = 0.0


# algorithm.local_steps = None means the algorithm's own default K.
DEFAULT_LOCAL_STEPS = 5
DPSGD_LOCAL_STEPS = 1  # Lian et al.: one SGD step between gossips

# Algorithms whose local optimizer state may be kept across rounds (algorithm.
# keep_optimizer_state); dpsgd and gossip always keep it, the server algorithms never do.
USES_KEEP_OPTIMIZER_STATE = {"dfedavg", "dfedavgm", "dfedsam", "dfedsam_mgs"}


class LocalWork(NamedTuple):
  local_steps: int  # K, the scan length
  num_steps_N: Optional[np.ndarray]  # [N] per-node steps, or None when all take K
  max_epochs: Optional[int]  # epochs a round reads at most (E in local_epochs mode), or None


def _momentum(a, default: float) -> float:
  return default if a.momentum is None else float(a.momentum)


def local_work(a, shard_sizes: np.ndarray, default_steps: int = DEFAULT_LOCAL_STEPS) -> LocalWork:
  """K = local_steps (None: `default_steps`), or with E = local_epochs > 0 each node i takes
  E * ceil(n_i / batch_size) steps and K is their maximum (the scan length; shorter nodes mask)."""
  if not a.local_epochs:
    return LocalWork(default_steps if a.local_steps is None else int(a.local_steps), None, None)
  if a.batch_size == 0:  # full batches: an epoch is one step
    return LocalWork(int(a.local_epochs), None, int(a.local_epochs))
  steps_N = a.local_epochs * -(-np.asarray(shard_sizes, np.int64) // a.batch_size)
  if np.all(steps_N == steps_N[0]):  # equal shards: no masking needed
    return LocalWork(int(steps_N[0]), None, int(a.local_epochs))
  return LocalWork(int(steps_N.max()), steps_N.astype(np.int32), int(a.local_epochs))


def _keep(a) -> bool:
  return bool(a.get("keep_optimizer_state", False))


def _gossip_steps(a, default: int) -> int:
  return default if a.gossip_steps is None else int(a.gossip_steps)


def _local(a, ctx: BuildContext, default_steps: int = DEFAULT_LOCAL_STEPS) -> dict:
  """Keyword arguments every local-update factory takes: the optimizer and the batch stream."""
  work = local_work(a, ctx.shard_sizes, default_steps)
  return dict(lr=a.lr, local_steps=work.local_steps, batch_size=a.batch_size,
              weight_decay=a.weight_decay, lr_decay=a.lr_decay, clip_norm=a.get("clip_norm"),
              augment=ctx.augment, num_steps_N=work.num_steps_N, max_epochs=work.max_epochs)


def _dfedavg(a, ctx: BuildContext) -> Algorithm:
  if _momentum(a, 0.0) != 0.0:
    raise ValueError(f"algorithm.name='dfedavg' is plain local SGD but algorithm.momentum="
                     f"{a.momentum}; use algorithm.name='dfedavgm' for local momentum.")
  return dfedavg(ctx.loss_fn, mixer=ctx.mixer, keep_optimizer_state=_keep(a),
                 **_local(a, ctx))


def _dfedavgm(a, ctx: BuildContext) -> Algorithm:
  momentum = _momentum(a, 0.9)
  if not 0.0 < momentum < 1.0:
    raise ValueError(f"algorithm.name='dfedavgm' needs 0 < algorithm.momentum < 1, got {momentum}.")
  return dfedavg(ctx.loss_fn, momentum=momentum, mixer=ctx.mixer,
                 keep_optimizer_state=_keep(a), **_local(a, ctx))


def _dfedsam(a, ctx: BuildContext) -> Algorithm:
  if _gossip_steps(a, 1) != 1:
    raise ValueError(f"algorithm.name='dfedsam' gossips once per round but algorithm."
                     f"gossip_steps={a.gossip_steps}; use algorithm.name='dfedsam_mgs' for Q > 1.")
  return dfedsam(ctx.loss_fn, rho=a.rho, momentum=_momentum(a, 0.0), mixer=ctx.mixer,
                 keep_optimizer_state=_keep(a), **_local(a, ctx))


def _dfedsam_mgs(a, ctx: BuildContext) -> Algorithm:
  return dfedsam_mgs(ctx.loss_fn, rho=a.rho, gossip_steps=_gossip_steps(a, PAPER_GOSSIP_STEPS),
                     momentum=_momentum(a, 0.0), mixer=ctx.mixer,
                     keep_optimizer_state=_keep(a), **_local(a, ctx))


def _dpsgd(a, ctx: BuildContext) -> Algorithm:
  return dpsgd(ctx.loss_fn, momentum=_momentum(a, 0.0), mixer=ctx.mixer,
               **_local(a, ctx, DPSGD_LOCAL_STEPS))


def _choco(a, ctx: BuildContext) -> Algorithm:
  compressor = make_compressor(a.compressor, ratio=a.compression_ratio,
                               levels=a.quantization_levels)
  return choco(ctx.loss_fn, compressor, consensus_step=a.consensus_step,
               momentum=_momentum(a, 0.0), **_local(a, ctx, DPSGD_LOCAL_STEPS))


def _push_sum(a, ctx: BuildContext) -> Algorithm:
  return push_sum(ctx.loss_fn, momentum=_momentum(a, 0.0), **_local(a, ctx, DPSGD_LOCAL_STEPS))


def _fedavg(a, ctx: BuildContext) -> Algorithm:
  return fedavg(ctx.loss_fn, num_nodes=ctx.num_nodes, client_fraction=a.client_fraction,
                momentum=_momentum(a, 0.0), aggregation_weights=a.aggregation_weights,
                **_local(a, ctx))


def _fedsam(a, ctx: BuildContext) -> Algorithm:
  return fedsam(ctx.loss_fn, num_nodes=ctx.num_nodes, rho=a.rho,
                client_fraction=a.client_fraction, momentum=_momentum(a, 0.0), **_local(a, ctx))


def _gossip(a, ctx: BuildContext) -> Algorithm:
  k = DEFAULT_LOCAL_STEPS if a.local_steps is None else int(a.local_steps)
  return gossip_learning(ctx.loss_fn, lr=a.lr, local_steps=k, batch_size=a.batch_size,
                         self_weight=a.self_weight, momentum=_momentum(a, 0.0),
                         weight_decay=a.weight_decay, lr_decay=a.lr_decay, mixer=ctx.mixer,
                         merge_rounds=ctx.merge_rounds,
                         aggregation_weights=a.aggregation_weights,
                         clip_norm=a.get("clip_norm"), augment=ctx.augment)


def _modest(a, ctx: BuildContext) -> Algorithm:
  sample_size = min(10, ctx.num_nodes) if a.sample_size is None else a.sample_size  # paper: 10
  return modest(ctx.loss_fn, num_nodes=ctx.num_nodes, sample_size=sample_size,
                aggregators=a.aggregators, success_fraction=a.success_fraction,
                membership=build_membership(ctx.num_nodes, a.membership, seed=ctx.seed),
                momentum=_momentum(a, 0.0), min_models=a.min_models,
                inactivity_rounds=a.inactivity_rounds, **_local(a, ctx))


ALGORITHMS: dict[str, Callable[..., Algorithm]] = {
    "dpsgd": _dpsgd,
    "choco": _choco,
    "push_sum": _push_sum,
    "dfedavg": _dfedavg,
    "dfedavgm": _dfedavgm,
    "dfedsam": _dfedsam,
    "dfedsam_mgs": _dfedsam_mgs,
    "fedavg": _fedavg,
    "fedsam": _fedsam,
    "gossip": _gossip,
    "modest": _modest,
    # Builders kept in the algorithm's own module.
    "gradient_tracking": _gradient_tracking_module.build,
    "exact_diffusion": _exact_diffusion_module.build,
    "qgm": _qgm_module.build,
    "async_gossip": _async_gossip_module.build,
}

# Algorithms that communicate over the topology's graph (the others ignore W).
USES_TOPOLOGY = {"dpsgd", "dfedavg", "dfedavgm", "dfedsam", "dfedsam_mgs", "gossip", "choco",
                 "push_sum", "gradient_tracking", "exact_diffusion", "qgm", "async_gossip"}

# Algorithms that take exactly one gradient per round (algorithm.local_steps unset or 1).
ONE_GRADIENT_PER_ROUND = {"exact_diffusion", "qgm"}

# Algorithms that cannot run variance-corrected mixing (it would break their corrections).
NO_VARIANCE_CORRECTION = {"gradient_tracking", "exact_diffusion", "qgm"}

# Gossip algorithms whose exchange is a plain gossip step that `BuildContext.mixer` (variance
# correction) may replace; CHOCO mixes public copies and push-sum numerators instead, and the
# tracking / diffusion / quasi-global-momentum corrections assume the plain W; async_gossip
# averages its own buffers.
USES_MIXER = USES_TOPOLOGY - {"choco", "push_sum", "async_gossip"} - NO_VARIANCE_CORRECTION

# Algorithms that hold copies of their neighbours' state and so need a fixed graph (no
# time-varying topology, no schedule).
STATIC_TOPOLOGY_ONLY = {"choco"}

# Algorithms that need a column-stochastic W (topology.weights=column_uniform on a directed
# graph, or any doubly stochastic W), and the only ones that may use column_uniform weights.
COLUMN_STOCHASTIC = {"push_sum"}

# The CHOCO fields of the algorithm section and their defaults (unused elsewhere).
CHOCO_FIELDS = {"compressor": "identity", "compression_ratio": 0.1, "quantization_levels": 16,
                "consensus_step": 0.9}

# Algorithms whose rounds may repeat gossip (algorithm.gossip_steps = Q).
USES_GOSSIP_STEPS = {"dfedsam", "dfedsam_mgs"}


def build_algorithm(algorithm_config, ctx: BuildContext) -> Algorithm:
  """The registered builder of algorithm.name, or a user's builder named by import path
  ("package.module:builder", called as builder(algorithm_config, ctx) like the ones here)."""
  name = algorithm_config.name
  if is_import_path(name):
    algorithm = resolve(name, "algorithm.name")(algorithm_config, ctx)
    if not (callable(getattr(algorithm, "init", None)) and
            callable(getattr(algorithm, "round", None))):
      raise UserError(f"algorithm.name={name!r} returned a {type(algorithm).__name__}; a builder "
                      "returns dfl.algorithms.Algorithm(init, round).")
    return algorithm
  if name not in ALGORITHMS:
    raise ValueError(f"Unknown algorithm.name={name!r}; valid: {sorted(ALGORITHMS)} or an import "
                     "path 'package.module:builder'.")
  return ALGORITHMS[name](algorithm_config, ctx)


__all__ = ["Algorithm", "RoundInputs", "RoundMetrics", "BuildContext", "ALGORITHMS",
           "USES_TOPOLOGY", "USES_GOSSIP_STEPS", "USES_MIXER", "STATIC_TOPOLOGY_ONLY",
           "COLUMN_STOCHASTIC", "CHOCO_FIELDS", "ONE_GRADIENT_PER_ROUND",
           "NO_VARIANCE_CORRECTION", "USES_KEEP_OPTIMIZER_STATE", "LocalWork",
           "build_algorithm", "local_work"]
