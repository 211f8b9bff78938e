"""Algorithms by name: algorithm.name -> builder(algorithm_config, context) -> Algorithm.

Each algorithm registers its builder and the hyperparameters it reads in its own module
(dfl/algorithms/registry.py); importing this package imports them all. The builders are the
only place that reads the `algorithm` config section; the factories they call take explicit
keyword arguments. A new algorithm is a new file with a `registry.register(...)` builder,
imported below, or, outside the library, a builder named by import path
(`algorithm.name="my_pkg.algos:build"`), which uses every field and batches none.

The sets below (which algorithms use the topology, the mixer, gossip_steps, ...) are derived
from the registered specs.
"""
from __future__ import annotations

from typing import Callable

from dfl.algorithms import registry
from dfl.algorithms.base import Algorithm, RoundInputs, RoundMetrics
from dfl.algorithms.common import (DEFAULT_LOCAL_STEPS, ONE_LOCAL_STEP, LocalWork,
                                   local_work)
# Imported for their registrations.
from dfl.algorithms import (async_gossip, choco, dfedavg, dfedsam, dfedsam_mgs, dpsgd,  # noqa
                            exact_diffusion, fedavg, fedsam, gossip, gradient_tracking, modest,
                            push_sum, qgm)
from dfl.algorithms.registry import (BuildContext, batchable_fields, batchable_values,
                                     build_algorithm, structural_key, used_fields)

DPSGD_LOCAL_STEPS = ONE_LOCAL_STEP


def _having(flag: str) -> frozenset[str]:
  return frozenset(n for n in registry.names() if getattr(registry.spec(n), flag))


ALGORITHMS: dict[str, Callable[..., Algorithm]] = {
    n: registry.spec(n).build for n in registry.names()}

# Algorithms that communicate over the topology's graph (the others ignore W).
USES_TOPOLOGY = _having("uses_topology")
# Algorithms that take exactly one gradient per round (algorithm.local_steps unset or 1).
ONE_GRADIENT_PER_ROUND = _having("one_gradient_per_round")
# Algorithms that cannot run variance-corrected mixing (it would break their corrections).
NO_VARIANCE_CORRECTION = _having("no_variance_correction")
# Gossip algorithms whose exchange is a plain gossip step that `BuildContext.mixer` (variance
# correction) may replace; CHOCO mixes public copies and push-sum numerators instead, and the
# tracking / diffusion / quasi-global-momentum corrections assume the plain W.
USES_MIXER = _having("uses_mixer")
# Algorithms that hold copies of their neighbours' state and so need a fixed graph (no
# time-varying topology, no schedule).
STATIC_TOPOLOGY_ONLY = _having("static_topology_only")
# Algorithms that need a column-stochastic W (topology.weights=column_uniform on a directed
# graph, or any doubly stochastic W), and the only ones that may use column_uniform weights.
COLUMN_STOCHASTIC = _having("column_stochastic")
# The CHOCO fields of the algorithm section and their defaults (unused elsewhere).
CHOCO_FIELDS = {h.name: h.default for h in (choco.COMPRESSOR, choco.COMPRESSION_RATIO,
                                            choco.QUANTIZATION_LEVELS, choco.CONSENSUS_STEP)}
# Algorithms that carry a model's state (BatchNorm statistics) and dropout keys
# (dfl/model_state.py); the others refuse such a model.
SUPPORTS_MODEL_STATE = _having("supports_model_state")
# Algorithms whose rounds may repeat gossip (algorithm.gossip_steps = Q).
USES_GOSSIP_STEPS = frozenset(registry.users("gossip_steps"))
# Algorithms whose local optimizer state may be kept across rounds (algorithm.
# keep_optimizer_state); dpsgd and gossip always keep it, the server algorithms never do.
USES_KEEP_OPTIMIZER_STATE = frozenset(registry.users("keep_optimizer_state"))


__all__ = ["Algorithm", "RoundInputs", "RoundMetrics", "BuildContext", "ALGORITHMS",
           "USES_TOPOLOGY", "USES_GOSSIP_STEPS", "USES_MIXER", "STATIC_TOPOLOGY_ONLY",
           "COLUMN_STOCHASTIC", "CHOCO_FIELDS", "ONE_GRADIENT_PER_ROUND",
           "NO_VARIANCE_CORRECTION", "USES_KEEP_OPTIMIZER_STATE", "SUPPORTS_MODEL_STATE", "LocalWork",
           "build_algorithm", "local_work", "used_fields", "batchable_fields",
           "batchable_values", "structural_key", "DEFAULT_LOCAL_STEPS", "DPSGD_LOCAL_STEPS"]
