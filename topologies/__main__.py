"""Command-line view of a topology: degree stats, spectral gap, diameter, optional PNG.

    python -m topologies torus --num-nodes 16
    python -m topologies random_regular --num-nodes 32 --degree 3 --save-png /tmp/rr.png
    python -m topologies ring --num-nodes 16 --schedule final_merge --num-rounds 100
    python -m topologies --table --sizes 16 64     # Markdown table of every topology's gap
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import topologies

# Shown in --table; from_edges needs a file, so it is left out there.
_TABLE_NOTES = {
    "erdos_renyi": "p = 2 ln N / N, seed 0", "random_regular": "degree 4, seed 0",
    "small_world": "degree 4, rewire 0.1, seed 0", "one_peer_exponential": "mean W over a period; a period averages exactly (N = 2^k)",
    "random_neighbors": "degree 4; mean W over 32 rounds",
    "random_pull": "expected degree 0.2; mean W over 32 rounds", "torus": "most square rows x cols",
    "grid": "most square rows x cols", "exponential": "i -- i +- 2^k",
}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m topologies", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("name", nargs="?", help=f"one of {topologies.NAMES}")
  p.add_argument("--num-nodes", "-n", type=int, default=16)
  p.add_argument("--weights", default="metropolis_hastings", choices=sorted(topologies.WEIGHTS))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--laziness", type=float, default=0.0)
  p.add_argument("--degree", type=int, default=topologies.GRAPH_OPTIONS["degree"])
  p.add_argument("--edge-prob", type=float, default=None)
  p.add_argument("--rewire-prob", type=float, default=topologies.GRAPH_OPTIONS["rewire_prob"])
  p.add_argument("--directed", action="store_true")
  p.add_argument("--expected-degree", type=float,
                 default=topologies.GRAPH_OPTIONS["expected_degree"])
  p.add_argument("--edges-file", default="")
  p.add_argument("--schedule", default="none", choices=topologies.SCHEDULES)
  p.add_argument("--schedule-topology", default="complete")
  p.add_argument("--schedule-window", type=int, default=1)
  p.add_argument("--schedule-start", type=float, default=None)
  p.add_argument("--num-rounds", type=int, default=None)
  p.add_argument("--round", type=int, default=0, help="round whose W is drawn")
  p.add_argument("--save-png", default="", help="draw the graph and W of --round here")
  p.add_argument("--table", action="store_true",
                 help="print a Markdown table of every topology's spectral gap")
  p.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="N values for --table")
  return p


def _make(args, name: str, n: int) -> topologies.Topology:
  return topologies.make(
      name, n, weights=args.weights, seed=args.seed, laziness=args.laziness,
      num_rounds=args.num_rounds, schedule=args.schedule, schedule_topology=args.schedule_topology,
      schedule_window=args.schedule_window, schedule_start=args.schedule_start,
      degree=args.degree, edge_prob=args.edge_prob, rewire_prob=args.rewire_prob,
      directed=args.directed, edges_file=args.edges_file, expected_degree=args.expected_degree)


def table(args) -> str:
  """Markdown table: spectral gap (1 - |lambda_2| of W or its mean) and degrees at each N."""
  head = " | ".join(f"gap N={n} | degree N={n}" for n in args.sizes)
  lines = [f"| topology | {head} | notes |",
           "|" + "---|" * (2 + 2 * len(args.sizes))]
  for name in topologies.NAMES:
    if name == "from_edges":
      continue
    cells = []
    for n in args.sizes:
      try:
        p = _make(args, name, n).properties()
        degree = (str(p["degree_min"]) if p["degree_min"] == p["degree_max"]
                  else f"{p['degree_min']}-{p['degree_max']}")
        cells += [f"{p['spectral_gap']:.4f}", degree]
      except ValueError:
        cells += ["n/a", "n/a"]
    lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {_TABLE_NOTES.get(name, '')} |")
  return "\n".join(lines)


def describe(topology: topologies.Topology) -> str:
  props = topology.properties()
  width = max(len(k) for k in props)
  return "\n".join(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                   for k, v in props.items())


def save_png(topology: topologies.Topology, round_index: int, path: str) -> None:
  """Left: the graph of round `round_index` (grid or circular layout); right: W as a heat map."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import networkx as nx

  from topologies.checks import support_graph
  from topologies.graphs import near_square_factors
  W = topology.matrix(round_index)
  graph = support_graph(W, topology.directed)
  fig, (ax_g, ax_w) = plt.subplots(1, 2, figsize=(11, 5))
  base_name = topology.name.split("+")[0]
  if base_name in ("torus", "grid"):
    _, cols = near_square_factors(topology.num_nodes)
    pos = {i: (i % cols, -(i // cols)) for i in range(topology.num_nodes)}
  else:
    pos = nx.circular_layout(graph)
  nx.draw(graph, pos, ax=ax_g, node_size=max(20, 300 - 4 * topology.num_nodes),
          with_labels=topology.num_nodes <= 32, font_size=7, arrows=topology.directed,
          node_color="#4c72b0", font_color="white")
  ax_g.set_title(f"{topology.name}, N={topology.num_nodes}, round {round_index}")
  image = ax_w.imshow(W, cmap="viridis", interpolation="nearest")
  fig.colorbar(image, ax=ax_w, fraction=0.046)
  gap = topologies.spectral_gap(W)
  ax_w.set_title(f"W (round {round_index}), 1 - |lambda_2| = {gap:.4f}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.table:
    print(table(args))
    return 0
  if not args.name:
    _parser().error("give a topology NAME or --table")
  try:
    topology = _make(args, args.name, args.num_nodes)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  np.set_printoptions(precision=4, suppress=True, linewidth=120)
  print(describe(topology))
  if args.save_png:
    save_png(topology, args.round, args.save_png)
    print(f"saved {args.save_png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
