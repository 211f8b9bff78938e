"""The `algorithm` fields that several algorithms read, declared once (dfl/algorithms/registry.py),
and the local-update options built from them.

An algorithm lists the ones it reads in its `register(...)` call, with its own default where
it differs (`LOCAL_STEPS.with_default(1)` for D-PSGD, `MOMENTUM.with_default(0.9)` for
DFedAvgM). Their checks run on every config, whatever the algorithm: a field's valid range does
not depend on who reads it. Batchable: lr, lr_decay, momentum, weight_decay, rho, clip_norm
(numbers inside the update); local_steps, local_epochs, batch_size, gossip_steps and
client_fraction shape the program.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from dfl.algorithms import registry
from dfl.hyperparameters import Hyperparameter, require
from dfl.local import MAX_EPOCHS

DEFAULT_LOCAL_STEPS = 5  # K when algorithm.local_steps is None, unless the algorithm says else
ONE_LOCAL_STEP = 1  # Lian et al.'s D-PSGD: one SGD step between gossips (also CHOCO, push-sum)


def _check_local_steps(a) -> None:
  require(a.local_steps is None or (isinstance(a.local_steps, int) and a.local_steps >= 1),
          f"algorithm.local_steps must be an integer >= 1 or None (the algorithm's default: "
          f"5, dpsgd 1), got {a.local_steps!r}.")
  require(a.local_epochs or a.local_steps is None or a.local_steps <= MAX_EPOCHS,
          f"algorithm.local_steps={a.local_steps} may read more than {MAX_EPOCHS} epochs of a "
          f"small shard in one round, more than the batch stream supports (dfl/local.py); "
          f"use at most {MAX_EPOCHS}, or algorithm.local_epochs.")


def _check_clip_norm(a) -> None:
  clip_norm = a.get("clip_norm")
  require(clip_norm is None or clip_norm > 0,
          f"algorithm.clip_norm must be > 0 or None (no clipping), got {clip_norm}.")


def _check_keep(a) -> None:
  keep = a.get("keep_optimizer_state", False)
  require(isinstance(keep, bool), f"algorithm.keep_optimizer_state must be True or False, got "
          f"{keep!r}.")


def _keep_unused(a, name, users) -> Optional[str]:
  if not a.get("keep_optimizer_state", False):
    return None
  return (f"algorithm.keep_optimizer_state=True is only used by {users}, not algorithm.name="
          f"{name!r} (dpsgd and gossip always keep it; fedavg, fedsam and modest restart it); "
          "leave it False.")


def _check_gossip_steps(a) -> None:
  if a.gossip_steps is not None:
    require(a.gossip_steps >= 1, f"algorithm.gossip_steps must be >= 1, got {a.gossip_steps}.")


def _gossip_steps_unused(a, name, users) -> Optional[str]:
  if a.gossip_steps is None or a.gossip_steps == 1:
    return None
  return (f"algorithm.gossip_steps={a.gossip_steps} is only used by {users}, not "
          f"algorithm.name={name!r}; leave it unset.")


AGGREGATION_WEIGHTS_CHOICES = ("uniform", "num_samples")


def _check_aggregation_weights(a) -> None:
  require(a.aggregation_weights in AGGREGATION_WEIGHTS_CHOICES,
          f"Unknown algorithm.aggregation_weights={a.aggregation_weights!r}; valid: "
          f"{sorted(AGGREGATION_WEIGHTS_CHOICES)}.")


def _aggregation_weights_unused(a, name, users) -> Optional[str]:
  if a.aggregation_weights == "uniform":
    return None
  return (f"algorithm.aggregation_weights={a.aggregation_weights!r} is only used by {users}, "
          f"not algorithm.name={name!r}; leave it 'uniform'.")


LR = Hyperparameter(
    "lr", 0.1, batchable=True, doc="eta, the local learning rate",
    check=lambda a: require(a.lr > 0, f"algorithm.lr must be > 0, got {a.lr}."))
LR_DECAY = Hyperparameter(
    "lr_decay", 1.0, batchable=True, doc="eta_t = lr * lr_decay**t",
    check=lambda a: require(0 < a.lr_decay <= 1,
                            f"algorithm.lr_decay must be in (0, 1], got {a.lr_decay}."))
LOCAL_STEPS = Hyperparameter(
    "local_steps", DEFAULT_LOCAL_STEPS, check=_check_local_steps,
    doc="K local steps per round (when local_epochs = 0)")
BATCH_SIZE = Hyperparameter(
    "batch_size", 32, doc="minibatch size; 0: the node's whole shard every step",
    check=lambda a: require(
        isinstance(a.batch_size, int) and a.batch_size >= 0,
        f"algorithm.batch_size must be an integer >= 1, or 0 for full batches (the node's "
        f"whole shard every step), got {a.batch_size!r}."))
WEIGHT_DECAY = Hyperparameter(
    "weight_decay", 0.0, batchable=True, doc="coupled L2 weight decay of the local optimizer",
    check=lambda a: require(a.weight_decay >= 0,
                            f"algorithm.weight_decay must be >= 0, got {a.weight_decay}."))
CLIP_NORM = Hyperparameter("clip_norm", None, batchable=True, check=_check_clip_norm,
                           doc="clip the gradient to this global norm (None: no clipping)")
KEEP_OPTIMIZER_STATE = Hyperparameter(
    "keep_optimizer_state", False, check=_check_keep, if_unused=_keep_unused,
    doc="carry each node's optimizer state (momentum) across rounds")
CLIENT_FRACTION = Hyperparameter(
    "client_fraction", 0.1, doc="C, the fraction of clients a server samples per round",
    check=lambda a: require(0 < a.client_fraction <= 1, f"algorithm.client_fraction must be in "
                            f"(0, 1], got {a.client_fraction}."))
RHO = Hyperparameter(
    "rho", 0.05, batchable=True, doc="SAM radius (0: plain SGD)",
    check=lambda a: require(a.rho >= 0, f"algorithm.rho (SAM radius) must be >= 0, got {a.rho}."))
LOCAL_EPOCHS = Hyperparameter(
    "local_epochs", 0, doc="E > 0: node i takes E * ceil(shard_i / batch_size) steps",
    check=lambda a: require(
        isinstance(a.local_epochs, int) and 0 <= a.local_epochs <= MAX_EPOCHS,
        f"algorithm.local_epochs must be an integer in [0, {MAX_EPOCHS}] (0 = use "
        f"local_steps), got {a.local_epochs!r}."))
GOSSIP_STEPS = Hyperparameter("gossip_steps", 1, check=_check_gossip_steps,
                              if_unused=_gossip_steps_unused,
                              doc="Q, gossip exchanges after the local phase")
MOMENTUM = Hyperparameter("momentum", 0.0, batchable=True,
                          doc="heavy-ball momentum of the local optimizer")
AGGREGATION_WEIGHTS = Hyperparameter(
    "aggregation_weights", "uniform", check=_check_aggregation_weights,
    if_unused=_aggregation_weights_unused,
    doc="uniform | num_samples (models weighted by their shard sizes)")

# Checked on every config, in this order (the order of dfl/config_checks.py before the move).
registry.declare_shared(LR, LR_DECAY, LOCAL_STEPS, BATCH_SIZE, WEIGHT_DECAY, CLIP_NORM,
                        KEEP_OPTIMIZER_STATE, CLIENT_FRACTION, RHO, LOCAL_EPOCHS, GOSSIP_STEPS,
                        MOMENTUM, AGGREGATION_WEIGHTS)

# What `local_options` reads: the local optax chain and the batch stream.
LOCAL_UPDATE = (LR, LR_DECAY, LOCAL_STEPS, LOCAL_EPOCHS, BATCH_SIZE, WEIGHT_DECAY, CLIP_NORM)


def local_update(default_steps: int) -> tuple[Hyperparameter, ...]:
  """LOCAL_UPDATE with K = `default_steps` when algorithm.local_steps is None."""
  return tuple(LOCAL_STEPS.with_default(default_steps) if h is LOCAL_STEPS else h
               for h in LOCAL_UPDATE)


class LocalWork(NamedTuple):
  local_steps: int  # K, the scan length
  num_steps_N: Optional[np.ndarray]  # [N] per-node steps, or None when all take K
  max_epochs: Optional[int]  # epochs a round reads at most (E in local_epochs mode), or None


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


def local_options(a, ctx) -> dict:
  """Keyword arguments every local-update factory takes (the LOCAL_UPDATE fields): the
  optimizer and the batch stream, K defaulting to what a.name declares."""
  default_steps = registry.spec(a.name).hyperparameter("local_steps").default
  work = local_work(a, ctx.shard_sizes, default_steps)
  stateful = {} if ctx.model_state is None else dict(  # a model with state (dfl/model_state.py)
      model_state_N=ctx.model_state.init_N, average_stats=ctx.model_state.average_stats)
  return dict(lr=a.lr, local_steps=work.local_steps, batch_size=a.batch_size,
              weight_decay=a.weight_decay, lr_decay=a.lr_decay, clip_norm=a.get("clip_norm"),
              augment=ctx.augment, num_steps_N=work.num_steps_N, max_epochs=work.max_epochs,
              **stateful)
