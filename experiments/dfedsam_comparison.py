"""The DFedSAM paper's comparison (Shi et al., ICML 2023, Tables 1-2), CPU-sized: seven methods x
heterogeneity levels x seeds on a ring, on Fashion-MNIST.

    python -m experiments.dfedsam_comparison --workdir runs/dfedsam_comparison \
        --data_dir /work/shared/data

Writes to the workdir: one run folder per (alpha, method, seed) (config.json, metrics.jsonl,
summary.json); results.csv and results.md (final test accuracy of the node-averaged model and
mean local-model accuracy, mean ± std over seeds, and seconds per run); comparison.png (test
accuracy and consensus distance vs rounds, mean over seeds). A finished run (summary.json
present) is not run again, so an interrupted comparison resumes where it stopped.
The defaults take about 15 minutes on 2 shared CPU cores; the size flags scale it up to the
full experiments/configs/dfedsam_fmnist.py setting (--nodes 100 --rounds 100 --hidden 200).
"""
from __future__ import annotations

import csv
import json
import os
import time

import numpy as np
from absl import app, flags, logging

from dfl.train import train_and_evaluate
from experiments.configs import dfedsam_fmnist

METHODS = ("dpsgd", "dfedavg", "dfedavgm", "dfedsam", "dfedsam_mgs", "fedavg", "fedsam")
LABELS = {"dpsgd": "D-PSGD", "dfedavg": "DFedAvg", "dfedavgm": "DFedAvgM", "dfedsam": "DFedSAM",
          "dfedsam_mgs": "DFedSAM-MGS", "fedavg": "FedAvg", "fedsam": "FedSAM"}

_WORKDIR = flags.DEFINE_string("workdir", "runs/dfedsam_comparison", "Output directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Dataset root (empty: $DFL_DATA_DIR).")
_METHODS = flags.DEFINE_list("methods", list(METHODS), "Algorithms to compare.")
_ALPHAS = flags.DEFINE_list("alphas", ["0.3", "0.6"], "Dirichlet alphas (heterogeneity levels).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per (method, alpha): 0 .. seeds-1.")
_NODES = flags.DEFINE_integer("nodes", 16, "Number of nodes.")
_ROUNDS = flags.DEFINE_integer("rounds", 40, "Communication rounds.")
_HIDDEN = flags.DEFINE_integer("hidden", 64, "Width of the MLP's hidden layer.")
_LOCAL_STEPS = flags.DEFINE_integer("local_steps", 5, "K, local steps per round (D-PSGD: 1).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Local minibatch size.")
_LR = flags.DEFINE_float("lr", 0.1, "Local learning rate.")
_RHO = flags.DEFINE_float("rho", 0.05, "SAM radius for DFedSAM, DFedSAM-MGS and FedSAM.")
_Q = flags.DEFINE_integer("gossip_steps", 4, "Q, gossip steps of DFedSAM-MGS.")
_FRACTION = flags.DEFINE_float("client_fraction", 0.25, "FedAvg/FedSAM clients per round.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 5, "Rounds between evaluations.")


def run_config(method: str, alpha: str, seed: int):
  c = dfedsam_fmnist.get_config(f"dir{alpha}")
  c.seed = seed
  c.num_nodes = _NODES.value
  c.data.dir = _DATA_DIR.value
  c.model.hidden = (_HIDDEN.value,)
  c.algorithm.name = method
  # D-PSGD keeps its own default, one step per round (None), as in the README's table.
  c.algorithm.local_steps = None if method == "dpsgd" else _LOCAL_STEPS.value
  c.algorithm.batch_size = _BATCH.value
  c.algorithm.lr = _LR.value
  c.algorithm.rho = _RHO.value
  c.algorithm.client_fraction = _FRACTION.value
  if method == "dfedsam_mgs":
    c.algorithm.gossip_steps = _Q.value
  c.train.rounds = _ROUNDS.value
  c.eval.every_rounds = _EVAL_EVERY.value
  return c


def run_all(workdir: str) -> None:
  todo = [(a, m, s) for a in _ALPHAS.value for m in _METHODS.value for s in range(_SEEDS.value)]
  start = time.perf_counter()
  for i, (alpha, method, seed) in enumerate(todo, 1):
    run_dir = os.path.join(workdir, f"alpha{alpha}", method, f"seed{seed}")
    if os.path.exists(os.path.join(run_dir, "summary.json")):
      continue
    logging.info("[%d/%d] %s alpha=%s seed=%d", i, len(todo), method, alpha, seed)
    t0 = time.perf_counter()
    train_and_evaluate(run_config(method, alpha, seed), run_dir)
    with open(os.path.join(run_dir, "timing.json"), "w") as f:  # build + compile + train + eval
      json.dump({"process_seconds": round(time.perf_counter() - t0, 3)}, f)
  logging.info("all runs done in %.1f s", time.perf_counter() - start)


def load_runs(workdir: str):
  """{(alpha, method): [metrics records per seed]} and {(alpha, method): [seconds per seed]}."""
  curves, seconds = {}, {}
  for alpha in _ALPHAS.value:
    for method in _METHODS.value:
      for seed in range(_SEEDS.value):
        run_dir = os.path.join(workdir, f"alpha{alpha}", method, f"seed{seed}")
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
          curves.setdefault((alpha, method), []).append([json.loads(l) for l in f])
        timing = os.path.join(run_dir, "timing.json")
        if os.path.exists(timing):
          with open(timing) as f:
            seconds.setdefault((alpha, method), []).append(json.load(f)["process_seconds"])
  return curves, seconds


def write_table(workdir: str, curves, seconds) -> str:
  rows = []
  for alpha in _ALPHAS.value:
    for method in _METHODS.value:
      runs = curves[(alpha, method)]
      acc = np.array([r[-1]["test_accuracy"] for r in runs])
      local = np.array([r[-1]["test_accuracy_local_mean"] for r in runs])
      cd = np.array([r[-1]["consensus_distance"] for r in runs])
      secs = np.array(seconds.get((alpha, method), [np.nan]))
      rows.append({"alpha": alpha, "method": LABELS[method], "seeds": len(runs),
                   "acc_mean": acc.mean(), "acc_std": acc.std(),
                   "local_acc_mean": local.mean(), "local_acc_std": local.std(),
                   "consensus_distance": cd.mean(), "seconds_per_run": secs.mean()})
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  lines = ["| Dir(α) | method | acc. of averaged model (%) | mean local acc. (%) | "
           "consensus dist. | s/run |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    # Centralized methods: every node holds the server's model, distance 0 up to rounding.
    cd = "0 (server)" if r["method"].startswith("Fed") else f"{r['consensus_distance']:.3g}"
    lines.append(f"| {r['alpha']} | {r['method']} | {100 * r['acc_mean']:.2f} ± "
                 f"{100 * r['acc_std']:.2f} | {100 * r['local_acc_mean']:.2f} ± "
                 f"{100 * r['local_acc_std']:.2f} | {cd} | {r['seconds_per_run']:.1f} |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table)
  return table


def write_figure(workdir: str, curves) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  alphas = _ALPHAS.value
  fig, axes = plt.subplots(2, len(alphas), figsize=(5.5 * len(alphas), 7), squeeze=False)
  for col, alpha in enumerate(alphas):
    for method in _METHODS.value:
      runs = curves[(alpha, method)]
      rounds = [r["round"] for r in runs[0]]
      centralized = method.startswith("fed")  # every node holds the server model: distance 0
      for row, key in enumerate(("test_accuracy", "consensus_distance")):
        if row == 1 and centralized:
          continue
        values = np.array([[r[key] for r in run] for run in runs])
        mean, std = values.mean(0), values.std(0)
        first = 0 if row == 0 else 1  # round 0: one shared init, distance 0 (off a log axis)
        ax = axes[row, col]
        line, = ax.plot(rounds[first:], mean[first:], label=LABELS[method],
                        linestyle="--" if centralized else "-")
        ax.fill_between(rounds[first:], (mean - std)[first:], (mean + std)[first:],
                        color=line.get_color(), alpha=0.15)
    axes[0, col].set(title=f"Dir({alpha}), ring of {_NODES.value}", ylabel="test accuracy",
                     ylim=(0.5, None))
    axes[1, col].set(xlabel="round", ylabel="consensus distance (1/N) Σ‖x_i − x̄‖²",
                     yscale="log")
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(workdir, "comparison.png")
  fig.savefig(path, dpi=120)
  return path


def main(argv):
  del argv
  unknown = set(_METHODS.value) - set(METHODS)
  if unknown:
    raise app.UsageError(f"Unknown --methods {sorted(unknown)}; valid: {list(METHODS)}.")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  run_all(_WORKDIR.value)
  curves, seconds = load_runs(_WORKDIR.value)
  print(write_table(_WORKDIR.value, curves, seconds))
  print("figure:", write_figure(_WORKDIR.value, curves))


if __name__ == "__main__":
  app.run(main)
