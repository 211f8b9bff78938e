"""CHOCO-SGD with each compressor vs D-PSGD: bytes sent per node to reach a target accuracy.

    python -m experiments.bytes_to_target --out runs/bytes_to_target

Koloskova et al. (ICML 2019) show CHOCO-SGD reaching D-PSGD's accuracy with far fewer bits per
node (their Figures 3-5, on a ring). CPU-sized version: 16 nodes on scikit-learn's digits
(embedded, 1,797 images; `--dataset mnist` reads $DFL_DATA_DIR), Dirichlet(0.5) labels,
multinomial logistic regression (650 float32 parameters), one SGD step per round (lr 0.2,
batch 32), 200 rounds, on a ring and a 4x4 torus. CHOCO with identity (gamma = 1: D-PSGD
itself), top_k and random_k keeping 10% of every tensor, QSGD with s = 16 and the scaled sign;
gamma per compressor below (not tuned beyond a few values). Accuracy is the node-averaged
model's on the full test set, every 10 rounds, so rounds and bytes to target are resolved to
10 rounds. Writes bytes_to_target.{md,csv,png} to --out; a run whose workdir holds a summary of
the same config is reused (modest_comparison's pattern). Took 3 minutes on 2 shared CPU cores;
the measured table and figure are in experiments/figures/bytes_to_target/.
"""
from __future__ import annotations

import argparse
import os

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.configs import default  # noqa: E402
from experiments.modest_comparison import (  # noqa: E402
    add_ratio_to_dpsgd, first_reaching, run, write_table)

# (label, algorithm, compressor, consensus step gamma)
VARIANTS = (("D-PSGD", "dpsgd", None, None),
            ("CHOCO identity", "choco", "identity", 1.0),
            ("CHOCO top_k 10%", "choco", "top_k", 0.4),
            ("CHOCO random_k 10%", "choco", "random_k", 0.1),
            ("CHOCO qsgd s=16", "choco", "qsgd", 0.6),
            ("CHOCO sign", "choco", "sign", 0.4))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="runs/bytes_to_target", help="tables, figure and run dirs")
  p.add_argument("--dataset", default="digits")
  p.add_argument("--model", default="logreg")
  p.add_argument("--num_nodes", type=int, default=16)
  p.add_argument("--rounds", type=int, default=200)
  p.add_argument("--eval_every", type=int, default=10)
  p.add_argument("--lr", type=float, default=0.2)
  p.add_argument("--target", type=float, default=0.88)
  p.add_argument("--topologies", nargs="+", default=["ring", "torus"])
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args()


def make_config(args, topology: str, algorithm: str, compressor, gamma):
  c = default.get_config()
  c.seed = args.seed
  c.num_nodes = args.num_nodes
  c.data.name = args.dataset
  c.model.name = args.model
  c.topology.name = topology
  c.algorithm.name = algorithm
  c.algorithm.lr = args.lr
  c.algorithm.local_steps = None  # one SGD step per round (D-PSGD's and CHOCO's default)
  if compressor is not None:
    c.algorithm.compressor = compressor
    c.algorithm.consensus_step = gamma
  c.train.rounds = args.rounds
  c.eval.every_rounds = args.eval_every
  c.eval.local_examples = 200
  c.eval.local_subset = "shared"  # all nodes on the first 200, as the README measured
  c.checkpoint.every_rounds = 0
  return c


def main():
  args = parse_args()
  os.makedirs(args.out, exist_ok=True)
  # Runs that differ only in W or gamma compile to the same program: share the XLA cache.
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.out, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  rows, curves = [], {}
  for topology in args.topologies:
    for label, algorithm, compressor, gamma in VARIANTS:
      config = make_config(args, topology, algorithm, compressor, gamma)
      name = algorithm if compressor is None else f"choco_{compressor}"
      records = run(config, os.path.join(args.out, topology, name))
      curves[topology, label] = records
      final, reached = records[-1], first_reaching(records, args.target)
      per_node_round = final["comm_bytes"] / (args.num_nodes * final["round"])
      rows.append({
          "topology": topology, "algorithm": label,
          "gamma": "-" if gamma is None else gamma,
          "bytes_per_node_round": round(per_node_round, 1),
          "final_accuracy": round(final["test_accuracy"], 4),
          "best_accuracy": round(max(r["test_accuracy"] for r in records), 4),
          "rounds_to_target": reached["round"] if reached else None,
          "KB_per_node_to_target":
              round(reached["comm_bytes"] / args.num_nodes / 1e3, 1) if reached else None,
      })
    add_ratio_to_dpsgd(rows, "topology", topology, "KB_per_node_to_target",
                       "dpsgd_bytes_over_this")
  write_table(rows, os.path.join(args.out, "bytes_to_target"))
  plot(args, curves)


def plot(args, curves: dict) -> None:
  fig, axes = plt.subplots(1, len(args.topologies), figsize=(5.5 * len(args.topologies), 4),
                           squeeze=False)
  for ax, topology in zip(axes[0], args.topologies):
    for i, (label, *_rest) in enumerate(VARIANTS):
      records = curves[topology, label][1:]
      ax.plot([r["comm_bytes"] / args.num_nodes / 1e3 for r in records],
              [r["test_accuracy"] for r in records], label=label, color=f"C{i}",
              ls="--" if label == "CHOCO identity" else "-")
    ax.axhline(args.target, color="gray", ls=":", lw=1)
    ax.set(xscale="log", xlabel="KB sent per node (log)", ylabel="test accuracy (averaged model)",
           title=f"{topology}, N={args.num_nodes}")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(f"CHOCO-SGD vs D-PSGD on {args.dataset} / {args.model}: bytes to accuracy")
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "bytes_to_target.png"), dpi=120)


if __name__ == "__main__":
  main()
