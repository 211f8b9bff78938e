"""Communication graphs and gossip mixing matrices (numpy only, importable without JAX).

    topology = topologies.make("torus", 16, weights="metropolis_hastings", seed=0)
    W = topology.matrix(round_index)          # [N, N] numpy, row i = node i's weights
    indices, weights = topology.neighbors(round_index)   # padded [N, K] sparse form
    topology.properties()                     # degrees, connectivity, spectral gap, ...

Command line: `python -m topologies NAME --num-nodes N` (see topologies/__main__.py).
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional

import numpy as np

from topologies.checks import check_connected, check_mixing_matrix
from topologies.edges_file import from_edges
from topologies.graphs import STATIC_GRAPHS
from topologies.schedules import SCHEDULES, ScheduledTopology, schedule_rounds, scheduled
from topologies.time_varying import TIME_VARYING_GRAPHS
from topologies.topology import Graph, Topology, spectral_gap, to_neighbors
from topologies.weights import COLUMN_STOCHASTIC_WEIGHTS, WEIGHTS, lazy

GRAPHS = {**STATIC_GRAPHS, **TIME_VARYING_GRAPHS, "from_edges": from_edges}
NAMES = sorted(GRAPHS)
# Graph-specific options; a graph ignores those it does not take (the config carries them all).
GRAPH_OPTIONS = {
    "degree": 4,  # random_regular k; small_world k (even); random_neighbors draws per round
    "edge_prob": None,  # erdos_renyi p (None: 2 ln N / N)
    "rewire_prob": 0.1,  # small_world rewiring probability
    "directed": False,  # exponential, random_neighbors, from_edges: row-stochastic W allowed
    "expected_degree": 0.2,  # random_pull: r, mean number of peers each node pulls per round
    "edges_file": "",  # from_edges: path of the edge list
    # Extra nodes N-S..N-1 attached to the graph built on the first N-S (e.g. Sybil identities
    # joining an honest network): S = attached_nodes, each linked to attached_degree nodes of
    # the base graph drawn by seed, the same in every round; 0: none.
    "attached_nodes": 0,
    "attached_degree": 2,
}


def attach_nodes(graph: Graph, base_nodes: int, count: int, degree: int, seed: int) -> Graph:
  """`graph` on `base_nodes` nodes with `count` more nodes appended, each linked both ways to
  `degree` distinct base nodes (drawn once from `seed`); the added nodes are not linked to each
  other. Weights are then computed on the whole graph as for any other."""
  if graph.matrix is not None:
    raise ValueError("topology.attached_nodes needs a graph whose weights dfl computes; an edge "
                     "file with explicit weights cannot take extra nodes.")
  if not 1 <= degree <= base_nodes:
    raise ValueError(f"topology.attached_degree must be in [1, {base_nodes}] (the base graph's "
                     f"nodes), got {degree}.")
  rng = np.random.default_rng(seed)
  peers = [rng.choice(base_nodes, size=degree, replace=False) for _ in range(count)]
  n = base_nodes + count

  def adjacency(t: int) -> np.ndarray:
    A = np.zeros((n, n), bool)
    A[:base_nodes, :base_nodes] = graph.adjacency(t)
    for k, p in enumerate(peers):
      A[base_nodes + k, p] = A[p, base_nodes + k] = True
    return A
  return graph._replace(adjacency=adjacency, width=None)


def _build_graph(name: str, num_nodes: int, seed: int, options: dict) -> Graph:
  attached = int(options.get("attached_nodes") or 0)
  if attached:
    if not 0 < attached <= num_nodes - 2:
      raise ValueError(f"topology.attached_nodes={attached} leaves fewer than 2 of the "
                       f"{num_nodes} nodes for the base graph; valid: 0 to {num_nodes - 2}.")
    base = _build_graph(name, num_nodes - attached, seed,
                        {**options, "attached_nodes": 0})
    return attach_nodes(base, num_nodes - attached, attached,
                        int(options["attached_degree"]), seed + 1)
  builder = GRAPHS[name]
  accepted = inspect.signature(builder).parameters
  if options.get("directed") and "directed" not in accepted:
    takes = sorted(n for n, b in GRAPHS.items() if "directed" in inspect.signature(b).parameters)
    raise ValueError(f"topology {name!r} has no directed form; directed=True works with {takes}.")
  kwargs = {k: v for k, v in {**options, "seed": seed}.items() if k in accepted}
  graph = builder(num_nodes, **kwargs)
  if isinstance(graph, Graph):
    return graph
  return Graph(lambda _, A=graph: A, directed=bool(kwargs.get("directed", False)))


def make(name: str, num_nodes: int, *, weights: str = "metropolis_hastings", seed: int = 0,
         laziness: float = 0.0, num_rounds: Optional[int] = None, schedule: str = "none",
         schedule_topology: str = "complete", schedule_window: int = 1,
         schedule_start: Optional[float] = None, **options) -> Topology:
  """Builds a checked topology by name.

  Args:
    name: one of `NAMES`.
    num_nodes: N.
    weights: one of `WEIGHTS` (metropolis_hastings, uniform, max_degree); ignored where an edge
      file gives weights.
    seed: seeds the random graphs (erdos_renyi, random_regular, small_world, random_neighbors).
    laziness: beta in W <- (1 - beta) W + beta I, 0 <= beta < 1.
    num_rounds: length of the run; schedules need it, time-varying graphs use it to size the
      sparse form.
    schedule: "none", "final_merge" (last round on `schedule_topology`) or "dense_window" (last
      `schedule_window` rounds on it); see topologies/schedules.py.
    schedule_topology: the dense graph of a schedule (complete = global merge); built with the
      same weights and seed, without laziness.
    schedule_window: rounds in the dense window.
    schedule_start: dense_window only: its first round (an integer), or its position as a
      fraction of the run in [0, 1) (`point1` of the reference's truncate_v2); None: at the end.
    **options: graph options, see `GRAPH_OPTIONS`; unused ones are ignored.

  Returns:
    A Topology whose every W_t is nonnegative and row-stochastic, doubly stochastic unless
    `directed=True` was asked for or the graph is row-stochastic by construction (random_pull),
    and (static or over a period) connected; with weights="column_uniform" column-stochastic
    instead of row-stochastic (`Topology.column_stochastic` says whether columns sum to 1).

  Raises:
    ValueError naming the bad value and what would be valid.
  """
  if name not in GRAPHS:
    raise ValueError(f"Unknown topology.name={name!r}; valid: {NAMES}.")
  if weights not in WEIGHTS:
    raise ValueError(f"Unknown topology.weights={weights!r}; valid: {sorted(WEIGHTS)}.")
  unknown = sorted(set(options) - set(GRAPH_OPTIONS))
  if unknown:
    raise ValueError(f"Unknown topology option(s) {unknown}; valid: {sorted(GRAPH_OPTIONS)}.")
  if not isinstance(num_nodes, int) or num_nodes < 2:
    raise ValueError(f"num_nodes must be an integer >= 2, got {num_nodes!r}.")
  if not 0 <= laziness < 1:
    raise ValueError(f"topology.laziness must be in [0, 1), got {laziness}.")
  options = {**GRAPH_OPTIONS, **options}
  graph = _build_graph(name, num_nodes, seed, options)
  # column_uniform: columns checked instead of rows (where weights are not given by a file)
  column = weights in COLUMN_STOCHASTIC_WEIGHTS and graph.matrix is None
  doubly = not (options["directed"] or graph.row_stochastic or column)  # random_pull: rows only
  what = f"topology {name!r}" + (f" ({options['edges_file']})" if name == "from_edges" else "")

  def matrix_fn(t: int):
    if graph.matrix is not None:
      W = graph.matrix(t)
    else:
      W = WEIGHTS[weights](graph.adjacency(t), directed=graph.directed)
    W = lazy(W, laziness)
    check_mixing_matrix(W, doubly_stochastic=doubly, what=f"{what} round {t}",
                        column_stochastic=column)
    return W

  if not graph.time_varying or graph.period:
    union = functools.reduce(np.logical_or, (graph.adjacency(t) for t in range(graph.period or 1)))
    check_connected(union, what + (" (over one period)" if graph.period else ""), graph.directed)
  description = {"weights": "from edges_file" if graph.matrix is not None else weights,
                 "laziness": laziness}
  topology = Topology(name, num_nodes, matrix_fn, time_varying=graph.time_varying,
                      directed=graph.directed, period=graph.period, num_rounds=num_rounds,
                      width_bound=graph.width, description=description,
                      column_stochastic=doubly or column)
  if not graph.time_varying:
    topology.matrix(0)  # build and check now, not in the middle of a run
  if schedule == "none":
    if schedule_start is not None:
      raise ValueError(f"topology.schedule_start={schedule_start} places a dense window, but "
                       "topology.schedule='none'; use schedule='dense_window' or leave it unset.")
    return topology
  rounds = schedule_rounds(schedule, num_rounds, schedule_window, schedule_start)
  if schedule_topology not in GRAPHS:
    raise ValueError(f"Unknown topology.schedule_topology={schedule_topology!r}; valid: {NAMES}.")
  dense = make(schedule_topology, num_nodes, weights=weights, seed=seed, num_rounds=num_rounds,
               **{**options, "directed": False})
  return scheduled(topology, dense, rounds, schedule=schedule)


__all__ = ["make", "Topology", "ScheduledTopology", "Graph", "NAMES", "GRAPHS", "WEIGHTS",
           "SCHEDULES", "GRAPH_OPTIONS", "COLUMN_STOCHASTIC_WEIGHTS", "spectral_gap", "to_neighbors", "scheduled",
           "check_mixing_matrix", "check_connected"]
