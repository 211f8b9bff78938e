"""A batch of runs as one compiled program: the run axis S vmapped next to the node axis.

Runs of one batch share the program's structure (algorithm, model, N, local steps, batch size,
rounds and evaluation schedule) and differ in values: their hyperparameters (lr, momentum, rho,
...: `batchable_values`), and everything derived from their seeds or data settings (init, data
partition, graph, sampling keys). Those values are data with a leading S axis:

* hyperparameters that differ between the runs (of those each algorithm declares batchable,
  `dfl.algorithms.registry.batchable_values`) are passed traced into the algorithm's builder
  (`Experiment.make_algorithm(overrides)`, the `optax.inject_hyperparams` pattern; dfl/tracing.py
  keeps the factories general for a traced value). Fields equal in every run stay Python
  constants, so a batch of seeds compiles the arithmetic of a separate run.
* per-run constants the builders derive from the data (per-node step counts of local epochs,
  MoDeST's membership schedule, ...) are found, not declared: one round of every run is traced
  to a jaxpr (`jax.make_jaxpr`); the runs batch when the jaxprs are the same equations, and the
  constants that differ between runs become a stacked input (`jax.core.eval_jaxpr` replays the
  equations with each run's constants). Different equations (another mixing form, a static vs. a
  time-varying graph with different structure, a non-batchable field) are refused with the reason,
  and `compatible_groups` splits a list of runs into batches that can share a program.
* shards are padded to the widest run (with JAX's partitionable threefry, the default, a draw
  depends only on its position, so padding changes nothing), sparse neighbour lists to the widest
  degree (weight 0, pointing at the node itself: no message), static graphs are repeated per
  round when another run of the batch has a time-varying one.

`RunBatch` has the chunk interface of one `Experiment` (`run_rounds(state, begin, end)`,
`evaluate`), with S = 1 delegating to the experiment itself (today's program, bit for bit).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dfl import execution as execution_lib
from dfl import model_state as model_state_lib
from dfl.algorithms.base import RoundInputs
from dfl.algorithms.registry import batchable_values
from dfl.algorithms.modest import check_batchable_quorum
from dfl.engine import make_batch_chunk_runner
from dfl.experiment import Experiment, use_sparse_mixing
from dfl.local import NodeData
from dfl.mixing import DenseMixing, SparseMixing

# Values whose presence changes the optimizer's state (a momentum buffer, a clipping stage): a
# batch holds runs on one side only, so that each run's state, and so its checkpoint, has the
# structure of its separate run (which a run resumed alone restores into).
STATE_CHANGING = {"algorithm.momentum": lambda v: v != 0.0,
                  "algorithm.clip_norm": lambda v: v != math.inf}


class IncompatibleRuns(ValueError):
  """Runs that cannot share one compiled program; the message says why."""


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _tree_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return (jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
          and all(np.shape(x) == np.shape(y) and np.array_equal(x, y) for x, y in zip(la, lb)))


def varying_hyperparameters(configs: Sequence) -> dict[str, np.ndarray]:
  """The batchable fields whose values differ between the runs: field -> float32 [S]."""
  per_run = [batchable_values(c) for c in configs]
  fields = sorted(set().union(*per_run))
  varying = {}
  for field in fields:
    values = [v.get(field) for v in per_run]
    if any(x is None for x in values):
      raise IncompatibleRuns(f"{field} is set in some runs of the batch and absent in others.")
    if len(set(values)) > 1:
      varying[field] = np.asarray(values, np.float32)
      if field in STATE_CHANGING and len({STATE_CHANGING[field](v) for v in values}) > 1:
        raise IncompatibleRuns(f"{field} is off (0 / unset) in some runs of the batch and set in "
                               "others, which changes the optimizer's state; they run in "
                               "separate batches.")
  if "algorithm.success_fraction" in varying:
    for c in configs:
      s = c.algorithm.sample_size
      try:
        check_batchable_quorum(c.algorithm.success_fraction,
                               min(10, c.num_nodes) if s is None else s)
      except ValueError as e:
        raise IncompatibleRuns(str(e)) from None
  return varying


def stacked_data(exps: Sequence[Experiment]) -> NodeData:
  """x, y shared; indices [S, N, L] padded to the widest run's shard row, sizes [S, N]."""
  widths = {e.data.indices.shape[1] for e in exps}
  if len(widths) > 1 and not jax.config.jax_threefry_partitionable:
    raise IncompatibleRuns("Runs with shards of different widths need "
                           "jax_threefry_partitionable=True (padding would change the random "
                           "draws); set it, or fix data.seed so that the runs share one partition.")
  width = max(widths)
  # dfl.data.partition.pack_shards' padding (repeat the node's own indices) to the common width.
  pack = lambda shards: np.stack([np.resize(p, width) for p in shards]).astype(np.int32)
  indices = np.stack([pack(e.shards) for e in exps])
  sizes = np.stack([np.asarray(e.data.sizes) for e in exps])
  return NodeData(exps[0].data.x, exps[0].data.y, jnp.asarray(indices), jnp.asarray(sizes))


def check_shared_problem(exps: Sequence[Experiment]) -> None:
  """The runs share one evaluator and the first run's training arrays x, y."""
  first = exps[0]
  for e in exps[1:]:
    if not (np.array_equal(e.dataset.x_train, first.dataset.x_train) and
            np.array_equal(e.dataset.y_train, first.dataset.y_train) and
            np.array_equal(e.dataset.x_test, first.dataset.x_test)):
      raise IncompatibleRuns(
          f"data.name={e.config.data.name!r} gives run seed={e.config.seed} data of its own, but "
          "a batch shares one dataset and one evaluator; fix data.seed, or run separately.")
    if not _tree_equal(e.optimum, first.optimum):
      raise IncompatibleRuns("The runs have different global minimizers x*; a batch shares one "
                             "evaluator. Fix data.seed, or run them separately.")
    if (e.honest_N is None) != (first.honest_N is None):
      raise IncompatibleRuns("Some runs of the batch have an adversary and others not.")
  config = first.config
  if config.eval.personal_test:
    raise IncompatibleRuns("eval.personal_test=True: each run's test splits follow its own "
                           "partition, and a batch shares one evaluator.")
  if config.eval.get("recompute_stats_batches", 0):
    raise IncompatibleRuns("eval.recompute_stats_batches re-estimates statistics on each run's "
                           "own calibration batches, and a batch shares one evaluator.")
  adversary = config.get("adversary")
  if adversary is not None and adversary.attack == "label_flip":
    raise IncompatibleRuns("adversary.attack='label_flip' poisons each run's own copy of the "
                           "data; a batch shares one.")
  if first.placement.mesh.size > 1:
    raise IncompatibleRuns("A batch of runs runs on one device; the node axis of these runs is "
                           f"sharded over {first.placement.mesh.size} (mesh).")


def _pad_sparse(op: SparseMixing, width: int) -> SparseMixing:
  """Neighbour lists [..., N, K] padded to K = width: weight 0, pointing at the node itself."""
  k, n = op.indices.shape[-1], op.indices.shape[-2]
  if k == width:
    return op
  shape = op.indices.shape[:-1] + (width - k,)
  self_pad = jnp.broadcast_to(jnp.arange(n, dtype=op.indices.dtype)[:, None], shape)
  return SparseMixing(jnp.concatenate([op.indices, self_pad], axis=-1),
                      jnp.concatenate([op.weights, jnp.zeros(shape, op.weights.dtype)], axis=-1))


class RunBatch:
  """S runs that share one compiled program (S = 1: the experiment's own program)."""

  def __init__(self, exps: Sequence[Experiment]):
    self.exps = list(exps)
    self.size = len(self.exps)
    exp0 = self.exps[0]
    self.time_varying = any(e.topology.time_varying for e in self.exps)
    if self.size == 1:
      return
    check_shared_problem(self.exps)
    if len({(e.topology.dense_rounds, e.config.train.rounds, e.config.eval.every_rounds)
            for e in self.exps}) > 1:
      raise IncompatibleRuns("The runs disagree on rounds, the evaluation schedule or a "
                             "schedule's dense rounds.")
    sparse = {use_sparse_mixing(e.config.topology.mixing_form, e.topology) for e in self.exps}
    if len(sparse) > 1:
      raise IncompatibleRuns("The runs' graphs choose different mixing forms (dense and sparse); "
                             "set topology.mixing_form=dense to batch them.")
    self.sparse = sparse.pop()
    self.hyperparameters = varying_hyperparameters([e.config for e in self.exps])
    self.data = stacked_data(self.exps)
    self.train_key_S = jnp.stack([e.train_key for e in self.exps])
    self.honest_S = (None if exp0.honest_N is None else
                     jnp.stack([jnp.asarray(e.honest_N) for e in self.exps]))
    self._evaluate = jax.jit(jax.vmap(exp0.evaluate))
    self._runner = None  # built from the first state (`_program`)

  # --- the state of a batch: S = 1 the run's own, else stacked over runs ---
  def stack(self, states: Sequence):
    return states[0] if self.size == 1 else _stack(states)

  def unstack(self, state, s: int):
    return state if self.size == 1 else jax.tree.map(lambda x: x[s], state)

  def mixing_for(self, begin: int, end: int):
    """(mixing, per_round, per_run) for rounds [begin, end): shared by the runs when equal."""
    per_run = [e.mixing_for(begin, end)[0] for e in self.exps]  # (one mixing form: checked)
    if self.sparse:
      width = max(m.indices.shape[-1] for m in per_run)
      per_run = [_pad_sparse(m, width) for m in per_run]
    if self.time_varying:  # a static graph repeats for every round of the chunk
      per_run = [m if e.topology.time_varying else
                 jax.tree.map(lambda x: jnp.broadcast_to(x, (end - begin,) + x.shape), m)
                 for m, e in zip(per_run, self.exps)]
    if all(_tree_equal(m, per_run[0]) for m in per_run[1:]):
      return per_run[0], self.time_varying, False
    return _stack(per_run), self.time_varying, True

  def _program(self, state_S, mixing, per_round: bool, per_run: bool):
    """Traces one round of every run; the batched chunk runner and the per-run values."""
    round_mixing = jax.tree.map(lambda x: x[0], mixing) if per_run else mixing
    if per_round:
      round_mixing = jax.tree.map(lambda x: x[0], round_mixing)
    fields = sorted(self.hyperparameters)
    traced = []
    for s, exp in enumerate(self.exps):
      hp = {f: jnp.float32(self.hyperparameters[f][s]) for f in fields}
      data = NodeData(self.data.x, self.data.y, self.data.indices[s], self.data.sizes[s])
      traced.append(_round_jaxpr(exp, hp, self.unstack(state_S, s), data, round_mixing))
    closed0, out_shape0 = traced[0]
    text0 = str(closed0.jaxpr)
    for (closed, _), exp in zip(traced[1:], self.exps[1:]):
      if str(closed.jaxpr) != text0 or [np.shape(c) for c in closed.consts] != \
          [np.shape(c) for c in closed0.consts]:
        raise IncompatibleRuns(
            f"The run with seed={exp.config.seed} builds a different round program than the "
            f"run with seed={self.exps[0].config.seed} (a field that is not batchable differs, "
            "or the data changes a shape); they cannot share one program.")
    consts = [[c for c in closed.consts] for closed, _ in traced]
    varying = [k for k in range(len(consts[0]))
               if any(not np.array_equal(consts[s][k], consts[0][k]) for s in range(1, self.size))]
    shared = list(consts[0])
    jaxpr, out_tree = closed0.jaxpr, jax.tree.structure(out_shape0)

    def round_with(values, state, inputs):
      hp, varying_consts = values
      all_consts = list(shared)
      for k, c in zip(varying, varying_consts):
        all_consts[k] = c
      out = jax.core.eval_jaxpr(jaxpr, all_consts, *jax.tree.leaves((hp, state, inputs)))
      return jax.tree.unflatten(out_tree, out)

    values_S = ({f: jnp.asarray(self.hyperparameters[f]) for f in fields},
                [jnp.stack([jnp.asarray(consts[s][k]) for s in range(self.size)])
                 for k in varying])
    return make_batch_chunk_runner(round_with), values_S

  def run_rounds(self, state, begin: int, end: int):
    """Rounds [begin, end) of every run: (state, RoundMetrics with a leading S axis, or the
    run's own for S = 1)."""
    if self.size == 1:
      return self.exps[0].run_rounds(state, begin, end)
    mixing, per_round, per_run = self.mixing_for(begin, end)
    key = (per_round, per_run)
    if self._runner is None or self._runner[0] != key:
      self._runner = (key,) + self._program(state, mixing, per_round, per_run)
    _, runner, values_S = self._runner
    rounds_R = jnp.arange(begin, end, dtype=jnp.int32)
    return runner(state, self.data, self.train_key_S, rounds_R, mixing, per_round, per_run,
                  values_S)

  def evaluate(self, state) -> list[dict]:
    """Each run's evaluation figures (host values)."""
    stats = model_state_lib.of_state(state)  # BatchNorm statistics, for a model with state
    if self.size == 1:
      exp = self.exps[0]
      return [jax.device_get(exp.evaluate(state.params, exp.honest_N, stats))]
    figures = jax.device_get(self._evaluate(state.params, self.honest_S, stats))
    return [{k: v[s] for k, v in figures.items()} for s in range(self.size)]


# What a batch may hold, as a share of the device's memory, and the bytes one run needs per byte
# of its state: the state, its donated update, gradients and the optimizer's temporaries, plus
# the activations of one local step, estimated from the largest leaf (a conservative rule: XLA
# frees most temporaries between the scan's steps).
MEMORY_SHARE = 0.5
STATE_COPIES = 6


def device_memory_bytes() -> int:
  """The default device's memory: the accelerator's limit, or the host's RAM on CPU."""
  stats = jax.devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def max_batch_runs(exp: Experiment) -> int:
  """How many runs like `exp` one batch may hold (`--batch auto`): MEMORY_SHARE of the device's
  memory over STATE_COPIES times one run's state and shard indices; at least 1."""
  state = jax.eval_shape(exp.algorithm.init, exp.init_params)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  per_run = STATE_COPIES * state_bytes + exp.data.indices.size * 4
  return max(1, int(MEMORY_SHARE * device_memory_bytes() // per_run))


def _round_jaxpr(exp: Experiment, hp: dict, state, data: NodeData, mixing):
  """(ClosedJaxpr, output shapes) of one round of `exp` with the hyperparameters `hp` traced."""
  inputs = RoundInputs(jnp.int32(0), exp.train_key, mixing, data, exp.train_key)
  with execution_lib.using(exp.config.train.execution):
    return jax.make_jaxpr(lambda hp, state, inputs: exp.make_algorithm(hp).round(state, inputs),
                          return_shape=True)(hp, state, inputs)


def _signature(exp: Experiment, fields: Sequence[str], width: int, sparse_width: int) -> tuple:
  """What must be equal for two runs to share a program: one round's equations with every
  batchable field traced, at a common shard width and neighbour-list width."""
  state = jax.eval_shape(exp.algorithm.init, exp.init_params)
  n = exp.config.num_nodes
  data = NodeData(exp.data.x, exp.data.y, jax.ShapeDtypeStruct((n, width), jnp.int32),
                  exp.data.sizes)
  sparse = use_sparse_mixing(exp.config.topology.mixing_form, exp.topology)
  mixing = (SparseMixing(jax.ShapeDtypeStruct((n, sparse_width), jnp.int32),
                         jax.ShapeDtypeStruct((n, sparse_width), jnp.float32)) if sparse else
            DenseMixing(jax.ShapeDtypeStruct((n, n), jnp.float32)))
  values = batchable_values(exp.config)
  state_changing = tuple(on(values[f]) for f, on in sorted(STATE_CHANGING.items()) if f in values)
  # A field that is off in this run (momentum 0, no clipping) stays off: its state has no slot.
  hp = {f: jnp.float32(0) for f in fields
        if f not in STATE_CHANGING or STATE_CHANGING[f](values.get(f, 0.0))}
  closed, _ = _round_jaxpr(exp, hp, state, data, mixing)
  return (str(closed.jaxpr), tuple(np.shape(c) for c in closed.consts), sparse, state_changing,
          exp.topology.dense_rounds, exp.config.train.rounds, exp.config.eval.every_rounds)


def compatible_groups(exps: Sequence[Experiment]) -> list[list[int]]:
  """Splits runs (by index, order kept) into groups that can each be one RunBatch: equal round
  programs (`_signature`), then the batch's own checks; a group that fails those runs alone."""
  fields = sorted(set().union(*(batchable_values(e.config) for e in exps)))
  width = max(e.data.indices.shape[1] for e in exps)
  sparse_width = max(e.topology.neighbor_width for e in exps)
  groups: dict[tuple, list[int]] = {}
  for i, exp in enumerate(exps):
    groups.setdefault(_signature(exp, fields, width, sparse_width), []).append(i)
  result = []
  for group in groups.values():
    try:
      if len(group) > 1:
        RunBatch([exps[j] for j in group])
        varying_hyperparameters([exps[j].config for j in group])
      result.append(group)
    except IncompatibleRuns:
      result.extend([j] for j in group)
  return result
