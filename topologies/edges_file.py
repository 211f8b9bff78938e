"""`from_edges`: a graph read from an edge-list text file, static or periodic in time.

Format (0-based node ids, `#` starts a comment, blank lines are skipped):

    # a 4-node ring with a chord
    0 1
    1 2
    2 3
    3 0
    0 2

Each line `i j` links i and j (with `directed=True`: i sends to j, so row j of W weights i).
Optional third column: the weight w_ji (and w_ij when undirected) instead of the `weights`
scheme; then every line needs one, lines `i i w` set the self weight, and self weights not
given are what is left of the row. Lines `round 0`, `round 1`, ... start the edge sets of
consecutive rounds: the graph is time-varying and repeats with that period.
"""
from __future__ import annotations

import os

import numpy as np

from topologies.topology import Graph


def _parse(path: str, n: int, directed: bool):
  """-> list of rounds, each a list of (line_number, i, j, weight or None)."""
  where = f"edges_file {path!r}"
  if not path:
    raise ValueError("topology 'from_edges' needs topology.edges_file (a path to an edge list).")
  if not os.path.isfile(path):
    raise ValueError(f"{where} does not exist.")
  rounds, weighted, seen = [], None, {}
  with open(path) as f:
    for number, raw in enumerate(f, start=1):
      line = raw.split("#", 1)[0].strip()
      if not line:
        continue
      fields = line.split()
      at = f"{where}, line {number}"
      if fields[0] == "round":
        if len(fields) != 2 or fields[1] != str(len(rounds)):
          raise ValueError(f"{at}: expected 'round {len(rounds)}' (rounds numbered from 0 in "
                           f"order), got {line!r}.")
        rounds.append([])
        seen = {}
        continue
      if len(fields) not in (2, 3):
        raise ValueError(f"{at}: expected 'i j' or 'i j weight', got {line!r}.")
      try:
        i, j = int(fields[0]), int(fields[1])
        w = float(fields[2]) if len(fields) == 3 else None
      except ValueError:
        raise ValueError(f"{at}: expected integer node ids and a numeric weight, got "
                         f"{line!r}.") from None
      for node in (i, j):
        if not 0 <= node < n:
          raise ValueError(f"{at}: node {node} out of range for num_nodes={n} (ids 0..{n - 1}).")
      if weighted is None:
        weighted = w is not None
      if weighted != (w is not None):
        raise ValueError(f"{at}: {'every' if weighted else 'no'} line needs a weight, as the "
                         f"first edge line set; got {line!r}.")
      if i == j and not weighted:
        raise ValueError(f"{at}: self-loop {i} {j}; self weights are implicit without a weight "
                         "column.")
      if w is not None and w < 0:
        raise ValueError(f"{at}: negative weight {w}; mixing weights must be >= 0.")
      key = (i, j) if directed else (min(i, j), max(i, j))
      if key in seen:
        raise ValueError(f"{at}: duplicate edge {i} {j} (first on line {seen[key]}).")
      seen[key] = number
      if not rounds:
        rounds.append([])
      rounds[-1].append((number, i, j, w))
  if not rounds or not all(rounds):
    empty = next((t for t, r in enumerate(rounds) if not r), 0)
    raise ValueError(f"{where}: no edges" + (f" in round {empty}." if rounds else "."))
  return rounds, bool(weighted)


def from_edges(num_nodes: int, *, edges_file: str, directed: bool = False) -> Graph:
  n = num_nodes
  rounds, weighted = _parse(edges_file, n, directed)
  adjacency_R, weights_R = [], []
  for edges in rounds:
    A = np.zeros((n, n), bool)
    W = np.zeros((n, n))
    self_given = np.zeros(n, bool)
    for _, i, j, w in edges:
      if i == j:
        W[i, i], self_given[i] = w, True
        continue
      A[j, i] = True  # j receives from i
      W[j, i] = w if weighted else 0.0
      if not directed:
        A[i, j] = True
        W[i, j] = W[j, i]
    if weighted:
      implicit = np.flatnonzero(~self_given)
      W[implicit, implicit] = 1.0 - W[implicit].sum(axis=1)
    adjacency_R.append(A)
    weights_R.append(W)

  period = len(rounds)
  return Graph(lambda t: adjacency_R[t % period], time_varying=period > 1, directed=directed,
               period=period if period > 1 else None,
               matrix=(lambda t: weights_R[t % period].copy()) if weighted else None)
