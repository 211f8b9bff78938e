"""Sweep throughput: a grid run as batches (one compiled program per batch) vs one process per
run, side by side, with the real command lines.

    python -m experiments.sweep_throughput --workloads digits,W1 --grids 8,27,81 --rounds 50

For each workload and grid size, the same `launch.sweep` grid runs twice into fresh roots:
`--batch auto` (runs that differ only in batchable values share a program; dfl/batching.py) and
`--batch none` (one `launch.main` process per run, as every per-client simulator runs a sweep),
both `--parallel 1` on the same machine, one after the other. Reported: the whole sweep's wall
time (process starts, data loading, compilation, training, evaluation, outputs), runs per hour,
the ratio, and the largest difference of a run's final accuracy between the two (float32
rounding only: the batch vmaps the round over runs). With --caps, the 27-run grid also runs with
`--batch K` for each K, which shows where batching stops paying on this machine.

Workloads: `digits` is the default job (DFedAvg, 16 nodes, ring, embedded digits); `W1` is the
benchmark's W1 (Fashion-MNIST, 32 nodes, MLP 784-200-200-10, DFedSAM rho 0.05, Dirichlet 0.3),
which needs the data directory (--data_dir or $DFL_DATA_DIR). The grids cross batchable values
only: 8 = lr x alpha x seed (2 each), 27 = 3 each, 81 = 27 x 3 weight decays (digits) or
rho values (W1).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_WORKLOADS = flags.DEFINE_list("workloads", ["digits"], "digits and/or W1.")
_GRIDS = flags.DEFINE_list("grids", ["8", "27"], "Grid sizes: 8, 27, 81.")
_ROUNDS = flags.DEFINE_integer("rounds", 50, "Rounds per run.")
_EVERY = flags.DEFINE_integer("eval_every", 10, "Evaluation period in rounds.")
_CAPS = flags.DEFINE_list("caps", [], "Also run the 27-run grid with --batch K for these K.")
_DATA_DIR = flags.DEFINE_string("data_dir", os.environ.get("DFL_DATA_DIR", ""),
                                "Root of mnist/ and fashion_mnist/ (W1).")
_ROOT = flags.DEFINE_string("root", None, "Where the sweeps go (default: a temporary directory).")

VALUES = {"lr": ["0.05", "0.1", "0.2"], "data.alpha": ["0.1", "0.3", "1.0"],
          "seed": ["0", "1", "2"], "algorithm.weight_decay": ["0.0", "1e-4", "1e-3"],
          "algorithm.rho": ["0.01", "0.05", "0.1"]}


def workload_flags(name: str) -> tuple[list[str], str]:
  """The --config flags of a workload, and the fourth axis of its 81-run grid."""
  common = [f"--config.train.rounds={_ROUNDS.value}", f"--config.eval.every_rounds={_EVERY.value}",
            "--config.checkpoint.every_rounds=0"]
  if name == "digits":
    return common, "algorithm.weight_decay"
  if name == "W1":
    if not _DATA_DIR.value:
      raise app.UsageError("W1 needs Fashion-MNIST: pass --data_dir or set DFL_DATA_DIR.")
    return common + ["--config.num_nodes=32", "--config.data.name=fashion_mnist",
                     f"--config.data.dir={_DATA_DIR.value}", "--config.model.name=mlp",
                     "--config.algorithm.name=dfedsam", "--config.algorithm.rho=0.05",
                     "--config.data.alpha=0.3"], "algorithm.rho"
  raise app.UsageError(f"Unknown workload {name!r}; valid: digits, W1.")


def grid_axes(size: int, fourth: str) -> list[str]:
  per_axis = {8: 2, 27: 3, 81: 3}[size]
  axes = [("algorithm.lr", VALUES["lr"]), ("data.alpha", VALUES["data.alpha"])]
  if size == 81:
    axes.append((fourth, VALUES[fourth]))
  flags_ = [f"--sweep={field}={','.join(values[:per_axis])}" for field, values in axes]
  return flags_ + [f"--seeds={','.join(VALUES['seed'][:per_axis])}"]


def run_sweep(root: str, config_flags: list[str], axes: list[str], batch: str) -> float:
  if os.path.exists(root):
    shutil.rmtree(root)
  cmd = [sys.executable, "-m", "launch.sweep", "--config=experiments/configs/default.py",
         f"--root={root}", "--parallel=1", f"--batch={batch}", *axes, *config_flags]
  start = time.perf_counter()
  result = subprocess.run(cmd, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
  return seconds


def final_accuracies(root: str) -> dict[str, float]:
  out = {}
  for dirpath, _, files in os.walk(root):
    if "summary.json" in files:
      with open(os.path.join(dirpath, "summary.json")) as f:
        out[os.path.relpath(dirpath, root)] = json.load(f)["final_test_accuracy"]
  return out


def main(argv):
  del argv
  root = _ROOT.value or tempfile.mkdtemp(prefix="sweep_throughput_")
  rows = []
  print(f"{os.cpu_count()} CPU cores; {_ROUNDS.value} rounds per run, evaluation every "
        f"{_EVERY.value} rounds; roots under {root}", flush=True)
  for workload in _WORKLOADS.value:
    config_flags, fourth = workload_flags(workload)
    for size in [int(g) for g in _GRIDS.value]:
      axes = grid_axes(size, fourth)
      where = os.path.join(root, f"{workload}_{size}")
      batched = run_sweep(where + "_batched", config_flags, axes, "auto")
      separate = run_sweep(where + "_separate", config_flags, axes, "none")
      a, b = final_accuracies(where + "_batched"), final_accuracies(where + "_separate")
      assert len(a) == len(b) == size, (len(a), len(b), size)
      diff = max(abs(a[k] - b[k]) for k in a)
      rows.append((workload, size, "auto", batched, separate, diff))
      print(f"{workload} {size} runs: batched {batched:.1f} s, one process per run "
            f"{separate:.1f} s ({separate / batched:.2f}x); max |accuracy difference| {diff:.1e}",
            flush=True)
    for cap in _CAPS.value:
      axes = grid_axes(27, fourth)
      where = os.path.join(root, f"{workload}_27_cap{cap}")
      capped = run_sweep(where, config_flags, axes, cap)
      rows.append((workload, 27, cap, capped, None, None))
      print(f"{workload} 27 runs with --batch {cap}: {capped:.1f} s", flush=True)

  print("\n| workload | runs | --batch | batched: wall (s) | runs/hour | one process per run: "
        "wall (s) | runs/hour | speedup | max acc. diff |\n|---|---|---|---|---|---|---|---|---|")
  for workload, size, batch, batched, separate, diff in rows:
    if separate is None:
      print(f"| {workload} | {size} | {batch} | {batched:.1f} | {3600 * size / batched:.0f} | | | | |")
      continue
    print(f"| {workload} | {size} | {batch} | {batched:.1f} | {3600 * size / batched:.0f} | "
          f"{separate:.1f} | {3600 * size / separate:.0f} | {separate / batched:.2f}x | "
          f"{diff:.1e} |")


if __name__ == "__main__":
  app.run(main)
