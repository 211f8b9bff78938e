"""Figures for the vanishing variance problem (Tian et al., arXiv 2404.04616): gossip learning
with and without variance-corrected averaging, and FedAvg as the reference.

    # the paper's setting, vca_mnist.py as it is (LeNet-5, batch 64, one step per round):
    python -m experiments.vca_figures --out runs/vca_paper --local_examples 0
    # the FedAvg MLP, ten steps of 32 per round, 40 rounds (what experiments/figures/vca
    # was made with, before vca_mnist took DFL_torch's LeNet-5 and correction formula):
    python -m experiments.vca_figures --out runs/vca_mlp --model mlp --local_steps 10 \
        --batch_size 32 --rounds 40 --eval_every 4

Starts from experiments/configs/vca_mnist.py (50 nodes, random 8-regular graph, LeNet-5,
independent inits, SGD lr 0.01 momentum 0.9 wd 1e-4, batch 64, one local step per round, and
DFL_torch's variance correction), overrides only what is given on the command line, and runs
each variant in chunks of `--eval_every` rounds with the library's compiled round runner,
recording after every chunk the mean test accuracy of the nodes' own models and, for every
layer, the variance of its kernel averaged over the nodes. Writes `results.json`, `accuracy.png`, `variance.png` and prints the rounds each
variant needed to reach each of `--targets` (None: not within the run).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dfl.experiment import build_experiment, mixing_operator  # noqa: E402
from dfl.variance_correction import layer_variances  # noqa: E402
from experiments.configs import vca_mnist  # noqa: E402

VARIANTS = {  # label -> (algorithm.name, variance_correction.enabled)
    "gossip": ("gossip", False),
    "gossip + variance correction": ("gossip", True),
    "FedAvg": ("fedavg", False),
}


def make_config(args, algorithm: str, corrected: bool):
  """vca_mnist's config with the variant and every option given on the command line."""
  c = vca_mnist.get_config()
  c.algorithm.name = algorithm
  c.variance_correction.enabled = corrected
  overrides = {"model.name": args.model, "model.hidden": args.hidden and tuple(args.hidden),
               "num_nodes": args.num_nodes, "topology.name": args.topology,
               "topology.degree": args.degree, "algorithm.local_steps": args.local_steps,
               "algorithm.batch_size": args.batch_size, "train.rounds": args.rounds,
               "eval.every_rounds": args.eval_every, "eval.local_examples": args.local_examples}
  for dotted, value in overrides.items():
    if value is not None:
      *sections, leaf = dotted.split(".")
      node = c
      for section in sections:
        node = node[section]
      node[leaf] = value
  c.data.dir = args.data_dir
  c.seed = args.seed
  return c


def run_variant(config) -> list[dict]:
  """Runs one variant; returns one record per evaluation (round 0 included)."""
  exp = build_experiment(config)
  mixing = mixing_operator(exp.topology, 0, sparse=False)  # static graph, N <= 64
  state = exp.algorithm.init(exp.init_params)
  records, done, start = [], 0, time.perf_counter()

  def record(state, done):
    figures = jax.device_get(exp.evaluate(state.params))
    variances = {k: float(np.mean(v)) for k, v in jax.device_get(layer_variances(state.params)).items()
                 if k.endswith("kernel")}
    records.append({"round": done, "accuracy_local_mean": float(figures["test_accuracy_local_mean"]),
                    "accuracy_of_average": float(figures["test_accuracy"]),
                    "kernel_variance": variances, "wall_seconds": time.perf_counter() - start})

  record(state, 0)
  while done < config.train.rounds:
    length = min(config.eval.every_rounds, config.train.rounds - done)
    state, _ = exp.run_chunk(state, exp.data, exp.train_key,
                             jnp.arange(done, done + length, dtype=jnp.int32), mixing, False)
    done += length
    record(state, done)
    print(f"  round {done}: accuracy {records[-1]['accuracy_local_mean']:.4f}", flush=True)
  return records


def rounds_to(records: list[dict], target: float):
  return next((r["round"] for r in records if r["accuracy_local_mean"] >= target), None)


def plot(results: dict, out: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, records in results.items():
    ax.plot([r["round"] for r in records], [r["accuracy_local_mean"] for r in records], label=label)
  ax.set(xlabel="round", ylabel="test accuracy (mean over nodes' models)", ylim=(0, 1))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "accuracy.png"), dpi=120)

  layers = list(next(iter(results.values()))[0]["kernel_variance"])
  fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.2), sharex=True)
  for ax, layer in zip(np.atleast_1d(axes), layers):
    for label, records in results.items():
      ax.plot([r["round"] for r in records], [r["kernel_variance"][layer] for r in records],
              label=label)
    ax.set(title=layer, xlabel="round", yscale="log")
    ax.grid(alpha=0.3)
  np.atleast_1d(axes)[0].set_ylabel("kernel variance (mean over nodes)")
  np.atleast_1d(axes)[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "variance.png"), dpi=120)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="folder for results.json and the figures")
  # None: vca_mnist.py's value.
  p.add_argument("--model", default=None, choices=["lenet5", "mlp", "cnn"],
                 help="lenet5 = the paper's LeNet-5 (vca_mnist's); cnn = the 27x larger CNN")
  p.add_argument("--hidden", type=int, nargs="+", default=None, help="MLP widths")
  p.add_argument("--num_nodes", type=int, default=None)
  p.add_argument("--topology", default=None)
  p.add_argument("--degree", type=int, default=None)
  p.add_argument("--local_steps", type=int, default=None)
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--rounds", type=int, default=None)
  p.add_argument("--eval_every", type=int, default=None)
  p.add_argument("--local_examples", type=int, default=None, help="test samples per node; 0 = all")
  p.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.9, 0.95],
                 help="accuracies whose first-reached round is reported")
  p.add_argument("--data_dir", default="", help="root holding mnist/; empty = $DFL_DATA_DIR")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)

  results = {}
  for label in args.variants:
    print(f"{label}:", flush=True)
    results[label] = run_variant(make_config(args, *VARIANTS[label]))
  summary = {label: {"rounds_to": {str(t): rounds_to(records, t) for t in args.targets},
                     "final_accuracy": records[-1]["accuracy_local_mean"],
                     "wall_seconds": round(records[-1]["wall_seconds"], 1)}
             for label, records in results.items()}
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"args": vars(args), "summary": summary, "records": results}, f, indent=1)
  plot(results, args.out)
  for label, s in summary.items():
    reached = "  ".join(f"{float(t):.0%}: {r}" for t, r in s["rounds_to"].items())
    print(f"{label:30s} rounds to {reached}  final accuracy {s['final_accuracy']:.4f}  "
          f"({s['wall_seconds']} s)")


if __name__ == "__main__":
  main()
