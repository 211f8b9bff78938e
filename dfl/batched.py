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
Checkpoints: each seed saves its slice of the state into its own workdir, in the format of its
separate run, at the rounds that run would; an interrupted batch resumes from them (all seeds
must be at the same round), and a seed can also be resumed on its own without --seeds.
The batch holds every seed's workdir lock (dfl/workdir_lock.py) for its lifetime: all of them or
none, taken before anything is written; a seed's workdir in use elsewhere stops the batch at once.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dfl import checkpoint, model_state, workdir_lock
from dfl.algorithms.base import RoundInputs
from dfl.local import NodeData
from dfl.metric_writers import make_metric_writer
from dfl.progress import progress_bar
from dfl.experiment import Experiment, build_experiment, mixing_operator, use_sparse_mixing
from dfl.train import (OUTPUTS, _before_merge, checkpoint_due, chunk_end, evaluation_record,
                       headline, make_summary, run_meta, start_or_resume)

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


def check_shared_problem(exps: list[Experiment]) -> None:
  """The seeds share one evaluator (and the first seed's training arrays x, y): a generated
  dataset, or a global minimizer x*, that differs between seeds cannot be batched."""
  first = exps[0]
  same_data = all(np.array_equal(e.dataset.x_train, first.dataset.x_train) and
                  np.array_equal(e.dataset.y_train, first.dataset.y_train) for e in exps[1:])
  same_optimum = all(_tree_equal(e.optimum, first.optimum) for e in exps[1:])
  if not (same_data and same_optimum):
    raise ValueError(
        f"data.name={first.config.data.name!r} gives each seed its own "
        f"{'problem' if not same_data else 'global minimizer x*'}, but batched seeds share one "
        "dataset and one evaluator; fix data.seed so that the seeds share the data, or run the "
        "seeds one by one.")


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
  if config.eval.personal_test:  # each seed's splits follow its own partition; one evaluator
    raise ValueError("eval.personal_test=True is not supported with --seeds (batched seeds share "
                     "one evaluator); run the seeds one by one.")
  if config.eval.get("recompute_stats_batches", 0):  # drawn from each seed's own shards
    raise ValueError("eval.recompute_stats_batches > 0 is not supported with --seeds (batched "
                     "seeds share one evaluator, its calibration batches one seed's); run the "
                     "seeds one by one.")
  adversary = config.get("adversary")
  if adversary is not None and adversary.attack == "label_flip":  # x, y differ per seed
    raise ValueError("adversary.attack='label_flip' is not supported with --seeds (each seed's "
                     "attackers poison their own copy of the data; batched seeds share one); "
                     "run the seeds one by one.")
  if len({os.path.abspath(w) for w in workdirs}) != len(workdirs):
    raise ValueError(f"Need a distinct workdir per seed, got workdirs={list(workdirs)}.")
  with workdir_lock.hold(workdirs):
    try:
      return _train_and_evaluate_seeds(config, seeds, workdirs)
    except OSError as e:
      if checkpoint.is_disk_full(e):
        raise checkpoint.disk_full_error(workdirs[0], "the outputs of the batched seeds") from None
      raise


def _train_and_evaluate_seeds(config, seeds: Sequence[int], workdirs: Sequence[str]) -> list[dict]:
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
  check_shared_problem(exps)

  data = stacked_data(exps)
  for workdir in workdirs:
    os.makedirs(workdir, exist_ok=True)
    if config.checkpoint.fresh:
      checkpoint.discard_run(workdir, OUTPUTS)
  # Seed s checkpoints its slice of the state into its own workdir, exactly as its separate run
  # would: the batch resumes from them, and so could each seed on its own.
  checkpoints = [checkpoint.RunCheckpoints(w, max_to_keep=config.checkpoint.max_to_keep,
                                           async_save=config.checkpoint.async_save)
                 for w in workdirs]
  writers = []
  try:
    progress = [start_or_resume(e, w, c, evaluate_start=False)
                for e, w, c in zip(exps, workdirs, checkpoints)]
    resumed = sorted({p.round for p in progress})
    if len(resumed) > 1:
      raise ValueError(
          f"The seeds' newest checkpoints are at different rounds {resumed} (in "
          f"{', '.join(workdirs)}), so they cannot continue as one batch; resume them one by one "
          "(python -m launch.main without --seeds, one --workdir each) or start over with "
          "--config.checkpoint.fresh=True.")
    done, wall_offset = resumed[0], max(p.wall_offset for p in progress)
    data0 = NodeData(data.x, data.y, data.indices[0], data.sizes[0])
    check_same_program(exps, progress[0].state, data0, mixing_operator(exp0.topology, 0, sparse))
    state = _stack([p.state for p in progress])
    train_key_S = jnp.stack([e.train_key for e in exps])
    run_chunk = make_batched_chunk_runner(exp0.run_chunk)
    evaluate = jax.jit(jax.vmap(exp0.evaluate))
    honest_S = (None if exp0.honest_N is None else  # each seed's attackers are its own
                jnp.stack([jnp.asarray(e.honest_N) for e in exps]))

    for c, workdir in zip(configs, workdirs):
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json(indent=2))
    writers = [make_metric_writer(w, tensorboard=config.logging.tensorboard, mode="a",
                                  resume_round=done) for w in workdirs]
    comms = [p.comm for p in progress]
    records: list[list[dict]] = [p.records for p in progress]
    metas = [run_meta(c) for c in configs]

    def record(state_S, round_done, loss_S, wall):
      figures = jax.device_get(evaluate(state_S.params, honest_S, model_state.of_state(state_S)))
      for s in range(len(exps)):
        rec = evaluation_record({k: v[s] for k, v in figures.items()}, round_done,
                                None if loss_S is None else loss_S[s], comms[s], wall)
        records[s].append(rec)
        writers[s].write(rec)

    rounds = config.train.rounds
    start = time.perf_counter()
    if done == 0:
      record(state, 0, None, 0.0)
    with checkpoint.PreemptionGuard() as guard, \
        progress_bar(total=rounds, initial=done,
                     desc=f"{config.algorithm.name}/{config.topology.name} x{len(exps)} seeds") as bar:
      while done < rounds:
        begin = done
        length = chunk_end(exp0, begin) - begin  # the chunks of a separate run
        mixing, per_seed = _mixing(exps, range(begin, begin + length), sparse)
        rounds_R = jnp.arange(begin, begin + length, dtype=jnp.int32)
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
        wall = wall_offset + time.perf_counter() - start
        record(state, done, loss_S, wall)
        preempted = guard.signum is not None and done < rounds
        if preempted or checkpoint_due(config, begin, done):
          for s, ckpt in enumerate(checkpoints):
            ckpt.save(done, jax.tree.map(lambda x, s=s: x[s], state),
                      {**metas[s], "comm": comms[s].state_dict(), "wall_seconds": wall,
                       "record": records[s][-1]})
        bar.update(length)
        short, _, _ = headline(records[0][-1])
        bar.set_postfix(**{short: f"{np.mean([headline(r[-1])[2] for r in records]):.4g}"})
        if preempted:
          for ckpt in checkpoints:
            ckpt.wait()
          raise checkpoint.Preempted(guard.signum, done, (
              f"Stopped by {signal.Signals(guard.signum).name} after round {done} of {rounds}; "
              f"each seed's checkpoint is in its workdir. Run the same command to resume "
              f"from round {done}."))
  except BaseException:
    for w in writers:
      w.close()
    for ckpt in checkpoints:
      ckpt.close(after_error=True)  # a failed save in flight must not hide this error
    raise
  for w in writers:
    w.close()
  for ckpt in checkpoints:
    ckpt.close()

  wall = wall_offset + time.perf_counter() - start
  summaries = []
  for s, workdir in enumerate(workdirs):
    summary = make_summary(records[s], rounds, wall)
    if merge_start is not None:
      summary.update(_before_merge(records[s], merge_start))
    summary["batched_seeds"] = [int(x) for x in seeds]
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    summaries.append(summary)
  key = "final_test_accuracy" if "final_test_accuracy" in summaries[0] else "final_test_loss"
  print(f"{len(seeds)} seeds in one program, {wall:.1f} s; {key.replace('_', ' ')} of the "
        f"node-averaged model: " + ", ".join(f"{x[key]:.4g}" for x in summaries), flush=True)
  return summaries
