"""Several seeds of one config in one compiled program: a seed axis S vmapped next to the node axis.

    python -m launch.main --config experiments/configs/default.py --seeds=0,1,2,3 \
        --workdir='runs/default/seed={seed}'

Seed s is the run `train_and_evaluate(config with seed=s)`, with the same outputs in its own
workdir: its own initialisation, data partition, graph draw and sampling keys. Everything that
depends on the seed is data (params, shards, keys, W) and gets the leading S axis; the round
function is the one of the separate runs, vmapped once more. That is only sound when the
algorithm itself does not depend on the seed (e.g. no per-node step counts derived from shard
sizes), which is checked: the jaxpr of one round, constants included, must be the same for all
seeds. Shards are padded to a common width; with JAX's partitionable threefry (the default)
each sample's random draw depends only on its position, so padding does not change the run.
Not checkpointed: an interrupted batch starts again.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from dfl.algorithms.base import RoundInputs
from dfl.local import NodeData
from dfl.metric_writers import make_metric_writer
from dfl.experiment import Experiment, build_experiment, mixing_operator, use_sparse_mixing
from dfl.train import CommCounter, _before_merge, evaluation_record, make_summary

_stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _tree_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(la, lb)))


def _pack(shards: list[np.ndarray], width: int) -> np.ndarray:
  """dfl.data.partition.pack_shards' padding (repeat the node's own indices) to a given width."""
  return np.stack([np.resize(p, width) for p in shards]).astype(np.int32)


def stacked_data(exps: list[Experiment]) -> NodeData:
  """x, y shared; indices [S, N, L] padded to the widest seed, sizes [S, N]."""
  widths = {e.data.indices.shape[1] for e in exps}
  if len(widths) > 1 and not jax.config.jax_threefry_partitionable:
    raise ValueError("Batched seeds with shards of different widths need "
                     "jax_threefry_partitionable=True (padding would change the random draws); "
                     "set it, or fix data.seed so that all seeds share one partition.")
  width = max(widths)
  indices = np.stack([_pack(e.shards, width) for e in exps])
  sizes = np.stack([np.asarray(e.data.sizes) for e in exps])
  return NodeData(exps[0].data.x, exps[0].data.y, jnp.asarray(indices), jnp.asarray(sizes))


def check_same_program(exps: list[Experiment], state, data: NodeData, mixing) -> None:
  """Every seed's algorithm must trace to the same round (equations and constants)."""
  def program(exp):
    inputs = RoundInputs(jnp.int32(0), exp.train_key, mixing, data, exp.train_key)
    closed = jax.make_jaxpr(exp.algorithm.round)(state, inputs)
    return str(closed.jaxpr), closed.consts
  text0, consts0 = program(exps[0])
  for exp in exps[1:]:
    text, consts = program(exp)
    if text != text0 or not _tree_equal(list(consts), list(consts0)):
      raise ValueError(f"algorithm.name={exp.config.algorithm.name!r} is built differently for "
                       f"seed {exp.config.seed} than for seed {exps[0].config.seed} (it depends on "
                       "the seed, e.g. through shard sizes), so its seeds cannot share one "
                       "program; run them separately, or fix data.seed.")


def make_batched_chunk_runner(run_chunk: Callable) -> Callable:
  """vmaps `dfl.engine` run_chunk over a leading seed axis of state, shards, keys (and W)."""
  def run(state_S, data_S, train_key_S, rounds_R, mixing, per_round_mixing, mixing_per_seed):
    def one_seed(state, data, key, mixing):
      return run_chunk(state, data, key, rounds_R, mixing, per_round_mixing)
    return jax.vmap(one_seed, in_axes=(0, NodeData(None, None, 0, 0), 0,
                                       0 if mixing_per_seed else None))(
        state_S, data_S, train_key_S, mixing)
  return jax.jit(run, static_argnums=(5, 6), donate_argnums=(0,))


def _mixing(exps: list[Experiment], rounds: range, sparse: bool):
  """The chunk's mixing operators: shared by all seeds when equal, else stacked over S."""
  def for_seed(exp):
    ops = [mixing_operator(exp.topology, t, sparse) for t in rounds]
    return _stack(ops) if exp.topology.time_varying else ops[0]
  per_seed = [for_seed(e) for e in exps]
  if all(_tree_equal(m, per_seed[0]) for m in per_seed[1:]):
    return per_seed[0], False
  shapes = {tuple(x.shape for x in jax.tree.leaves(m)) for m in per_seed}
  if len(shapes) > 1:
    raise ValueError("The seeds' graphs give mixing operators of different shapes (sparse "
                     "neighbour lists of different widths); fix topology.seed or use "
                     "topology.mixing_form=dense to batch these seeds.")
  return _stack(per_seed), True


def train_and_evaluate_seeds(config, seeds: Sequence[int], workdirs: Sequence[str]) -> list[dict]:
  """Runs `config` for every seed in one vmapped program; writes each seed's usual outputs
  (config.json, metrics.jsonl, summary.json) to its workdir. Returns the summaries.

  The wall time in each summary is that of the whole batch.
  """
  if len(seeds) != len(workdirs) or len(set(seeds)) != len(seeds) or not seeds:
    raise ValueError(f"Need one workdir per distinct seed, got seeds={list(seeds)}, "
                     f"workdirs={list(workdirs)}.")
  configs = []
  for seed in seeds:
    c = copy.deepcopy(config)
    c.seed = int(seed)
    configs.append(c)
  exps = [build_experiment(c) for c in configs]
  exp0 = exps[0]
  if any((e.topology.time_varying, e.topology.dense_rounds) !=
         (exp0.topology.time_varying, exp0.topology.dense_rounds) for e in exps):
    raise ValueError("Seeds disagree on whether the graph is time-varying or on its schedule.")
  merge_start = exp0.topology.dense_rounds[0] if exp0.topology.dense_rounds else None
  sparse_S = {use_sparse_mixing(config.topology.mixing_form, e.topology) for e in exps}
  if len(sparse_S) > 1:
    raise ValueError("Seeds' graphs choose different mixing forms; set topology.mixing_form.")
  sparse = sparse_S.pop()

  data = stacked_data(exps)
  states = [exp0.algorithm.init(e.init_params) for e in exps]
  data0 = NodeData(data.x, data.y, data.indices[0], data.sizes[0])
  check_same_program(exps, states[0], data0, mixing_operator(exp0.topology, 0, sparse))
  state = _stack(states)
  train_key_S = jnp.stack([e.train_key for e in exps])
  run_chunk = make_batched_chunk_runner(exp0.run_chunk)
  evaluate = jax.jit(jax.vmap(exp0.evaluate))

  for c, workdir in zip(configs, workdirs):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(c.to_json(indent=2))
  writers = [make_metric_writer(w, tensorboard=config.logging.tensorboard) for w in workdirs]
  comms = [CommCounter(config.num_nodes, exp0.model_bytes) for _ in exps]
  records: list[list[dict]] = [[] for _ in exps]

  def record(params_S, round_done, loss_S, wall):
    figures = jax.device_get(evaluate(params_S))
    for s in range(len(exps)):
      rec = evaluation_record({k: v[s] for k, v in figures.items()}, round_done,
                              None if loss_S is None else loss_S[s], comms[s], wall)
      records[s].append(rec)
      writers[s].write(rec)

  rounds, every = config.train.rounds, config.eval.every_rounds
  start = time.perf_counter()
  record(state.params, 0, None, 0.0)
  try:
    with tqdm(total=rounds, desc=f"{config.algorithm.name}/{config.topology.name} x{len(exps)} seeds",
              unit="round", dynamic_ncols=True) as bar:
      done = 0
      while done < rounds:
        length = min(every, rounds - done)
        if merge_start is not None and done < merge_start < done + length:
          length = merge_start - done  # as train_and_evaluate: evaluate right before the merge
        mixing, per_seed = _mixing(exps, range(done, done + length), sparse)
        rounds_R = jnp.arange(done, done + length, dtype=jnp.int32)
        state, metrics = run_chunk(state, data, train_key_S, rounds_R, mixing,
                                   exp0.topology.time_varying, per_seed)
        done += length
        metrics = jax.device_get(metrics)
        for s, comm in enumerate(comms):
          comm.add(jax.tree.map(lambda x: x[s], metrics))
        loss_S = np.array([np.mean(loss) for loss in metrics.loss])  # as a separate run does
        if not np.all(np.isfinite(loss_S)):
          bad = [seeds[s] for s in np.flatnonzero(~np.isfinite(loss_S))]
          raise FloatingPointError(f"Training diverged for seed(s) {bad}: non-finite loss by "
                                   f"round {done}; lower algorithm.lr (now {config.algorithm.lr}).")
        record(state.params, done, loss_S, time.perf_counter() - start)
        bar.update(length)
        bar.set_postfix(acc=f"{np.mean([r[-1]['test_accuracy'] for r in records]):.4f}")
  finally:
    for w in writers:
      w.close()

  wall = time.perf_counter() - start
  summaries = []
  for s, workdir in enumerate(workdirs):
    summary = make_summary(records[s], rounds, wall)
    if merge_start is not None:
      summary.update(_before_merge(records[s], merge_start))
    summary["batched_seeds"] = [int(x) for x in seeds]
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    summaries.append(summary)
  print(f"{len(seeds)} seeds in one program, {wall:.1f} s; final test accuracy of the "
        f"node-averaged model: " + ", ".join(f"{x['final_test_accuracy']:.4f}" for x in summaries),
        flush=True)
  return summaries
