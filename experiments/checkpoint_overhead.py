"""Checkpoint overhead on round time: the same run with and without a checkpoint at every chunk.

    python -m experiments.checkpoint_overhead --num_nodes=16 --rounds=100 --every=10 --repeats=3

Runs the real driver (`train_and_evaluate`) on the default config in three modes, interleaved
`repeats` times so that machine load hits them alike:

    none   checkpoint.every_rounds=0: no checkpoint while the timed chunks run (only the final
           one, after the last evaluation, which is outside every timed interval)
    async  a checkpoint at every chunk end, written in a background thread (the default)
    sync   a checkpoint at every chunk end, the loop waiting for the write

A chunk's time is the difference of consecutive `wall_seconds` in metrics.jsonl: `every` rounds,
one evaluation, and (async/sync) the cost the previous chunk's checkpoint put on this one. The
first chunk (compilation) is left out. Prints the median chunk time per mode and the overhead
of each checkpointing mode against `none`, per checkpoint and relative: the worst case, as
checkpoint.every_rounds = k * every divides the relative overhead by k. Scale up with
--num_nodes, --model (cnn), --algorithm (dfedavgm carries momentum buffers), --data.
"""
import json
import os
import shutil
import tempfile

import numpy as np
from absl import app, flags

from dfl.train import train_and_evaluate
from experiments.configs import default

_NODES = flags.DEFINE_integer("num_nodes", 16, "Nodes.")
_ROUNDS = flags.DEFINE_integer("rounds", 100, "Rounds per run.")
_EVERY = flags.DEFINE_integer("every", 10, "Rounds per chunk (eval.every_rounds).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs per mode, interleaved.")
_MODEL = flags.DEFINE_string("model", "mlp", "model.name")
_ALGORITHM = flags.DEFINE_string("algorithm", "dfedavg", "algorithm.name")
_DATA = flags.DEFINE_string("data", "digits", "data.name")
_OUT = flags.DEFINE_string("out", "", "Optional JSON file for the results.")

MODES = {"none": {"every_rounds": 0, "async_save": True},
         "async": {"every_rounds": 1, "async_save": True},  # 1: at every chunk end
         "sync": {"every_rounds": 1, "async_save": False}}


def _config(mode: str):
  c = default.get_config()
  c.num_nodes, c.train.rounds, c.eval.every_rounds = _NODES.value, _ROUNDS.value, _EVERY.value
  c.model.name, c.algorithm.name, c.data.name = _MODEL.value, _ALGORITHM.value, _DATA.value
  for field, value in MODES[mode].items():
    c.checkpoint[field] = value
  return c


def _chunk_seconds(workdir: str) -> list[float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    wall = [json.loads(line)["wall_seconds"] for line in f]
  return np.diff(wall)[1:].tolist()  # [0] holds the compilation


def _size_mb(directory: str) -> float:
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(directory) for f in files) / 2**20


def main(argv):
  del argv
  chunks = {mode: [] for mode in MODES}
  size_mb = 0.0
  root = tempfile.mkdtemp(prefix="dfl_ckpt_overhead_")
  try:
    for repeat in range(_REPEATS.value):
      for mode in MODES:
        workdir = os.path.join(root, f"{mode}_{repeat}")
        train_and_evaluate(_config(mode), workdir)
        chunks[mode] += _chunk_seconds(workdir)
        if mode == "async":
          size_mb = _size_mb(os.path.join(workdir, "checkpoints", str(_ROUNDS.value)))
  finally:
    shutil.rmtree(root, ignore_errors=True)

  base = float(np.median(chunks["none"]))
  results = {"num_nodes": _NODES.value, "model": _MODEL.value, "algorithm": _ALGORITHM.value,
             "rounds_per_chunk": _EVERY.value, "checkpoint_mb": round(size_mb, 2), "modes": {}}
  print(f"\n{_NODES.value} nodes, {_MODEL.value}, {_ALGORITHM.value}, {_EVERY.value} rounds + one "
        f"evaluation per chunk, checkpoint {size_mb:.2f} MB; medians over "
        f"{len(chunks['none'])} chunks per mode")
  print(f"{'mode':<6} {'s/chunk':>9} {'ms/round':>9} {'overhead ms/ckpt':>17} {'overhead':>9}")
  for mode, times in chunks.items():
    median = float(np.median(times))
    extra = median - base
    results["modes"][mode] = {"median_chunk_s": median, "overhead_ms_per_checkpoint": 1e3 * extra,
                              "overhead_fraction": extra / base, "chunks": len(times)}
    print(f"{mode:<6} {median:9.4f} {1e3 * median / _EVERY.value:9.2f} {1e3 * extra:17.1f} "
          f"{100 * extra / base:8.1f}%")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
