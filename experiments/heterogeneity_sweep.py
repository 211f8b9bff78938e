"""Exact methods vs D-PSGD under growing heterogeneity: least squares and Fashion-MNIST.

    python -m experiments.heterogeneity_sweep --out runs/heterogeneity_sweep

Two sweeps over the same five algorithms, D-PSGD, DFedAvgM, gradient tracking (DSGT), exact
diffusion (D^2) and QGM (QG-DSGDm), 16 nodes on a ring (Metropolis-Hastings weights, spectral
gap 0.05):

1. Least squares (experiments/configs/least_squares.py: d = 10, 32 rows per node, L = 1,
   mu = 0.1), full batches, constant step 0.05, `--ls_rounds` rounds, data.heterogeneity in
   `--heterogeneity`: the final ||x̄ - x*||^2 (distance_to_optimum) of each. Gradient tracking
   and exact diffusion should reach x* (to float32 precision) at every heterogeneity, D-PSGD and
   QGM (same fixed point for a constant step) stop at a distance that grows with it, DFedAvgM's
   K = 5 local steps drift further.
2. Fashion-MNIST, multinomial logistic regression, Dirichlet(alpha) label skew for alpha in
   `--alphas`, minibatches of 32, lr 0.05, `--fmnist_rounds` rounds: the final test accuracy of the
   averaged model and the mean local model's.

Writes OUT/heterogeneity_sweep.{md,csv,png}; per-run workdirs under OUT/runs (a finished run with
the same config is reused). Data from $DFL_DATA_DIR (or --data_dir).
"""
from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.configs import default, least_squares  # noqa: E402
from experiments.modest_comparison import run, write_table  # noqa: E402

ALGORITHMS = ("dpsgd", "dfedavgm", "gradient_tracking", "exact_diffusion", "qgm")
LABELS = {"dpsgd": "D-PSGD", "dfedavgm": "DFedAvgM (K=5)", "gradient_tracking": "gradient tracking",
          "exact_diffusion": "exact diffusion (D^2)", "qgm": "QGM"}


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="runs/heterogeneity_sweep")
  p.add_argument("--num_nodes", type=int, default=16)
  p.add_argument("--topology", default="ring")
  p.add_argument("--heterogeneity", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0])
  p.add_argument("--ls_rounds", type=int, default=1500)
  p.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1, 0.5, 1.0, 10.0])
  p.add_argument("--fmnist_rounds", type=int, default=200)
  p.add_argument("--data_dir", default="")
  p.add_argument("--skip_fmnist", action="store_true")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args()


def common(c, args, algorithm: str):
  c.seed = args.seed
  c.num_nodes = args.num_nodes
  c.topology.name = args.topology
  c.algorithm.name = algorithm
  c.algorithm.local_steps = 5 if algorithm == "dfedavgm" else None  # the others: one step
  c.algorithm.momentum = 0.9 if algorithm in ("dfedavgm", "qgm") else None
  c.checkpoint.every_rounds = 0
  c.checkpoint.async_save = False
  return c


def least_squares_config(args, algorithm: str, heterogeneity: float):
  c = common(least_squares.get_config(), args, algorithm)
  c.data.heterogeneity = heterogeneity
  c.train.rounds = args.ls_rounds
  c.eval.every_rounds = args.ls_rounds // 10
  return c


def fmnist_config(args, algorithm: str, alpha: float):
  c = common(default.get_config(), args, algorithm)
  c.data.name, c.data.dir = "fashion_mnist", args.data_dir
  c.data.partition, c.data.alpha = "dirichlet", alpha
  c.model.name = "logreg"
  c.algorithm.lr = 0.05
  c.algorithm.batch_size = 32
  c.train.rounds = args.fmnist_rounds
  c.eval.every_rounds = args.fmnist_rounds // 4
  c.eval.local_examples = 1000
  c.eval.local_subset = "shared"  # all nodes on the first 1000, as the README measured
  return c


def main():
  args = parse_args()
  os.makedirs(args.out, exist_ok=True)
  rows, ls, fm = [], {}, {}
  for h in args.heterogeneity:
    for name in ALGORITHMS:
      records = run(least_squares_config(args, name, h),
                    os.path.join(args.out, "runs", "least_squares", f"h={h}", name))
      final = records[-1]
      ls[name, h] = final["distance_to_optimum"]
      rows.append({"problem": "least_squares", "heterogeneity / alpha": h,
                   "algorithm": LABELS[name],
                   "final distance_to_optimum": f"{final['distance_to_optimum']:.3g}",
                   "final distance (local mean)": f"{final['distance_to_optimum_local_mean']:.3g}",
                   "final test_accuracy": "", "final test_accuracy (local mean)": "",
                   "MB sent": round(final["comm_bytes"] / 1e6, 2)})
  if not args.skip_fmnist:
    for alpha in args.alphas:
      for name in ALGORITHMS:
        records = run(fmnist_config(args, name, alpha),
                      os.path.join(args.out, "runs", "fashion_mnist", f"alpha={alpha}", name))
        final = records[-1]
        fm[name, alpha] = (final["test_accuracy"], final["test_accuracy_local_mean"])
        rows.append({"problem": "fashion_mnist logreg", "heterogeneity / alpha": alpha,
                     "algorithm": LABELS[name], "final distance_to_optimum": "",
                     "final distance (local mean)": "",
                     "final test_accuracy": f"{final['test_accuracy']:.4f}",
                     "final test_accuracy (local mean)": f"{final['test_accuracy_local_mean']:.4f}",
                     "MB sent": round(final["comm_bytes"] / 1e6, 2)})
  stem = os.path.join(args.out, "heterogeneity_sweep")
  write_table(rows, stem)
  plot(args, ls, fm, stem + ".png")
  print(f"\nWrote {stem}.md, .csv and .png")


def plot(args, ls: dict, fm: dict, path: str) -> None:
  panels = 1 if args.skip_fmnist else 2
  fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
  ax = axes[0, 0]
  for name in ALGORITHMS:
    ax.plot(args.heterogeneity, [max(ls[name, h], 1e-16) for h in args.heterogeneity], "o-",
            label=LABELS[name])
  ax.set_yscale("log")
  ax.set_xlabel("data.heterogeneity h")
  ax.set_ylabel(r"final $\|\bar x - x^*\|^2$")
  ax.set_title(f"least squares, {args.num_nodes} nodes, {args.topology}, "
               f"{args.ls_rounds} rounds", fontsize="medium")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  if not args.skip_fmnist:
    ax = axes[0, 1]
    for name in ALGORITHMS:
      ax.plot(args.alphas, [fm[name, a][0] for a in args.alphas], "o-", label=LABELS[name])
    ax.set_xscale("log")
    ax.set_xlabel(r"Dirichlet $\alpha$ (smaller = more skew)")
    ax.set_ylabel("final test accuracy (averaged model)")
    ax.set_title(f"Fashion-MNIST logreg, {args.fmnist_rounds} rounds", fontsize="medium")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  main()
