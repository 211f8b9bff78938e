"""Communication graphs and gossip mixing matrices (numpy only, importable without JAX).

    topology = topologies.make("ring", 16)
    W = topology.matrix(round_index)          # [N, N] numpy
"""
from __future__ import annotations

from topologies.graphs import STATIC_GRAPHS
from topologies.topology import Topology, spectral_gap, to_neighbors
from topologies.weights import WEIGHTS

NAMES = sorted(STATIC_GRAPHS)


def make(name: str, num_nodes: int, *, weights: str = "metropolis_hastings", seed: int = 0,
         **options) -> Topology:
  """Builds a topology by name. Raises ValueError naming the bad value and the valid ones."""
  if name not in STATIC_GRAPHS:
    raise ValueError(f"Unknown topology.name={name!r}; valid: {NAMES}.")
  if weights not in WEIGHTS:
    raise ValueError(f"Unknown topology.weights={weights!r}; valid: {sorted(WEIGHTS)}.")
  adjacency = STATIC_GRAPHS[name](num_nodes, seed=seed, **options)
  return Topology(name, num_nodes, lambda _: WEIGHTS[weights](adjacency))


__all__ = ["make", "Topology", "NAMES", "spectral_gap", "to_neighbors"]
