"""MoDeST vs D-PSGD, DFedAvg and FedAvg: accuracy per round and per byte, and MoDeST under churn.

Reproduces, at CPU size, the two claims of de Vos et al., "MoDeST: Bridging the Gap between
Federated and Decentralized Learning with Decentralized Sampling" (arXiv 2302.13837): MoDeST
converges like FedAvg with far less communication than D-PSGD, and keeps training when most
nodes fail or new ones join.

    python -m experiments.modest_comparison --workdir runs/modest_comparison \
        --results experiments/figures/modest

Runs (non-IID MNIST and Fashion-MNIST, configs `experiments/configs/modest_{mnist,fmnist}.py`):
MoDeST (s participants, a aggregators), FedAvg with the same s clients per round, and D-PSGD
(one step per round) and DFedAvg (K local steps on every node) on `--dpsgd_topology`. Then
MoDeST with 80% of the nodes failing at `--fail_round`, and with a
quarter of the nodes joining at `--join_round`. Writes to --results: modest_comparison.{md,csv,png}
and modest_churn.{csv,png}. A run whose workdir holds a summary for the same config is reused.
Scale with --num_nodes, --rounds, --sample_size (defaults take about 15 minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import csv
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dfl.membership import build_membership  # noqa: E402
from dfl.train import train_and_evaluate  # noqa: E402
from experiments.configs import modest_fmnist, modest_mnist  # noqa: E402

CONFIGS = {"mnist": modest_mnist, "fashion_mnist": modest_fmnist}
LABELS = {"modest": "MoDeST", "fedavg": "FedAvg", "dpsgd": "D-PSGD", "dfedavg": "DFedAvg"}
COLORS = {"modest": "C0", "fedavg": "C1", "dpsgd": "C2", "dfedavg": "C3"}
# D-PSGD takes one SGD step per round; DFedAvg takes MoDeST's K local steps on every node,
# then one gossip step on the same graph: the decentralized baseline with equal local work.
ALGORITHMS = ("modest", "fedavg", "dpsgd", "dfedavg")
GOSSIP = ("dpsgd", "dfedavg")


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="runs/modest_comparison", help="per-run outputs")
  p.add_argument("--results", default="experiments/figures/modest", help="tables and figures")
  p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"], choices=CONFIGS)
  p.add_argument("--num_nodes", type=int, default=64)
  p.add_argument("--sample_size", type=int, default=10, help="MoDeST s = FedAvg clients/round")
  p.add_argument("--aggregators", type=int, default=1)
  p.add_argument("--rounds", type=int, default=200)
  p.add_argument("--eval_every", type=int, default=10)
  p.add_argument("--dpsgd_topology", default="one_peer_exponential")
  p.add_argument("--dpsgd_degree", type=int, default=0, help="topology.degree if > 0")
  p.add_argument("--targets", nargs="+", default=["mnist=0.9", "fashion_mnist=0.75"],
                 help="DATASET=ACCURACY for the bytes-to-target column")
  p.add_argument("--churn_dataset", default="fashion_mnist", choices=CONFIGS)
  p.add_argument("--fail_round", type=int, default=100)
  p.add_argument("--join_round", type=int, default=60)
  p.add_argument("--skip_churn", action="store_true")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args()


def make_config(args, dataset: str, algorithm: str, membership: str = ""):
  c = CONFIGS[dataset].get_config()
  c.seed = args.seed
  c.num_nodes = args.num_nodes
  c.train.rounds = args.rounds
  c.eval.every_rounds = args.eval_every
  c.eval.local_examples = 500
  c.eval.local_subset = "shared"  # all nodes on the first 500, as the README measured
  c.algorithm.name = algorithm
  c.algorithm.sample_size = args.sample_size
  c.algorithm.aggregators = args.aggregators
  c.algorithm.client_fraction = args.sample_size / args.num_nodes
  c.algorithm.membership = membership
  if algorithm == "dpsgd":
    c.algorithm.local_steps = None  # D-PSGD's own default: one SGD step per round
  if algorithm in GOSSIP:
    c.topology.name = args.dpsgd_topology
    if args.dpsgd_degree > 0:
      c.topology.degree = args.dpsgd_degree
  return c


def run(config, workdir: str) -> list[dict]:
  """Trains (or reuses a finished run of the same config); returns the metrics records."""
  config_path = os.path.join(workdir, "config.json")
  reusable = (os.path.exists(os.path.join(workdir, "summary.json"))
              and os.path.exists(config_path)
              and json.load(open(config_path)) == json.loads(config.to_json()))
  if not reusable:
    train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def first_reaching(records: list[dict], target: float):
  return next((r for r in records if r["test_accuracy"] >= target), None)


def comparison(args, targets: dict) -> None:
  rows, curves = [], {}
  for dataset in args.datasets:
    for algorithm in ALGORITHMS:
      config = make_config(args, dataset, algorithm)
      records = run(config, os.path.join(args.workdir, dataset, algorithm))
      curves[dataset, algorithm] = records
      final, reached = records[-1], first_reaching(records, targets[dataset])
      graph = {"dpsgd": config.topology.name, "dfedavg": config.topology.name,
               "fedavg": "server"}.get(algorithm, f"sample s={args.sample_size}, a={args.aggregators}")
      rows.append({
          "dataset": dataset, "algorithm": LABELS[algorithm], "graph": graph,
          "final_accuracy": round(final["test_accuracy"], 4),
          "best_accuracy": round(max(r["test_accuracy"] for r in records), 4),
          "total_MB": round(final["comm_bytes"] / 1e6, 1),
          "MB_per_round": round(final["comm_bytes"] / 1e6 / final["round"], 2),
          "max_node_MB": round(final["comm_bytes_max_node"] / 1e6, 1),
          "target": targets[dataset],
          "rounds_to_target": reached["round"] if reached else None,
          "MB_to_target": round(reached["comm_bytes"] / 1e6, 1) if reached else None,
      })
    add_ratio_to_dpsgd(rows, "dataset", dataset, "MB_to_target", "dpsgd_MB_to_target_over_this")
  write_table(rows, os.path.join(args.results, "modest_comparison"))
  plot_comparison(args, curves, targets)


def add_ratio_to_dpsgd(rows: list[dict], group_field: str, group, value_field: str,
                       ratio_field: str) -> None:
  """rows[ratio_field] = D-PSGD's value_field / this row's, for the rows of one group (a
  dataset, a graph); None where either is missing (the target was not reached)."""
  dpsgd = next(r for r in rows if r[group_field] == group and r["algorithm"] == "D-PSGD")
  for r in rows:
    if r[group_field] == group:
      r[ratio_field] = (round(dpsgd[value_field] / r[value_field], 2)
                        if dpsgd[value_field] and r[value_field] else None)


def write_table(rows: list[dict], stem: str) -> None:
  with open(stem + ".csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  fmt = lambda v: "not reached" if v is None else str(v)
  lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
  lines += ["| " + " | ".join(fmt(v) for v in r.values()) + " |" for r in rows]
  with open(stem + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def plot_comparison(args, curves: dict, targets: dict) -> None:
  fig, axes = plt.subplots(len(args.datasets), 2, figsize=(11, 3.8 * len(args.datasets)),
                           squeeze=False)
  for row, dataset in zip(axes, args.datasets):
    for algorithm in ALGORITHMS:
      records = curves[dataset, algorithm]
      acc = [r["test_accuracy"] for r in records]
      kw = dict(label=LABELS[algorithm], color=COLORS[algorithm])
      row[0].plot([r["round"] for r in records], acc, **kw)
      row[1].plot([max(r["comm_bytes"], 1) / 1e6 for r in records[1:]], acc[1:], **kw)
    for ax in row:
      ax.axhline(targets[dataset], color="gray", ls=":", lw=1)
      ax.set_ylabel(f"{dataset} test accuracy")
      ax.grid(alpha=0.3)
    row[0].set_xlabel("round")
    row[1].set_xlabel("total model bytes sent (MB, log)")
    row[1].set_xscale("log")
    row[0].legend()
  fig.suptitle(f"N={args.num_nodes} nodes, Dirichlet(0.3) labels; MoDeST s={args.sample_size}, "
               f"a={args.aggregators}; FedAvg {args.sample_size} clients/round; D-PSGD and "
               f"DFedAvg on {args.dpsgd_topology}")
  fig.tight_layout()
  fig.savefig(os.path.join(args.results, "modest_comparison.png"), dpi=120)


def churn(args) -> None:
  dataset, n = args.churn_dataset, args.num_nodes
  scenarios = {
      "no churn": "",
      f"80% fail at round {args.fail_round}": f"{args.fail_round}:fail:0.8",
      f"{n // 4} join at round {args.join_round}": f"{args.join_round}:join:{n // 4}",
  }
  fig, (ax_acc, ax_nodes) = plt.subplots(1, 2, figsize=(11, 3.8))
  rows = []
  for (label, schedule), color in zip(scenarios.items(), ("C0", "C3", "C4")):
    workdir = (os.path.join(args.workdir, "churn", dataset, schedule.replace(":", "_"))
               if schedule else os.path.join(args.workdir, dataset, "modest"))  # = comparison run
    records = run(make_config(args, dataset, "modest", schedule), workdir)
    ax_acc.plot([r["round"] for r in records], [r["test_accuracy"] for r in records],
                label=label, color=color)
    # Active-node counts depend only on the schedule's counts, not on which nodes are drawn.
    membership = build_membership(n, schedule)
    ax_nodes.plot(range(args.rounds), [membership.active_at(t).sum() for t in range(args.rounds)],
                  color=color, label=label, drawstyle="steps-post")
    rows += [{"scenario": label, "membership": schedule, "round": r["round"],
              "test_accuracy": round(r["test_accuracy"], 4),
              "comm_MB": round(r["comm_bytes"] / 1e6, 2),
              "control_messages": r["comm_control_messages"]} for r in records]
  ax_acc.set(xlabel="round", ylabel=f"{dataset} test accuracy (round model)")
  ax_nodes.set(xlabel="round", ylabel="responsive nodes")
  for ax in (ax_acc, ax_nodes):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(f"MoDeST under churn: N={n}, s={args.sample_size}, a={args.aggregators}")
  fig.tight_layout()
  fig.savefig(os.path.join(args.results, "modest_churn.png"), dpi=120)
  with open(os.path.join(args.results, "modest_churn.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  for label in scenarios:
    curve = {r["round"]: r["test_accuracy"] for r in rows if r["scenario"] == label}
    print(f"churn [{label}]: " + ", ".join(f"r{k}={v:.3f}" for k, v in curve.items()
                                           if k % (args.rounds // 8 or 1) == 0))


def main():
  args = parse_args()
  targets = {k: float(v) for k, v in (t.split("=") for t in args.targets)}
  missing = [d for d in args.datasets if d not in targets]
  if missing:
    raise SystemExit(f"--targets has no accuracy for {missing}; give e.g. {missing[0]}=0.8.")
  os.makedirs(args.results, exist_ok=True)
  comparison(args, targets)
  if not args.skip_churn:
    churn(args)


if __name__ == "__main__":
  main()
