"""Checks of mixing matrices and graphs, each failing with an error that names the bad entry."""
from __future__ import annotations

import networkx as nx
import numpy as np

_ATOL = 1e-9


def support_graph(W_or_A: np.ndarray, directed: bool) -> nx.Graph:
  """The graph of the off-diagonal nonzeros (edge j -> i where node i receives from node j)."""
  M = np.asarray(W_or_A)
  graph = nx.DiGraph() if directed else nx.Graph()
  graph.add_nodes_from(range(M.shape[0]))
  receivers, senders = np.nonzero(M)  # no [N, N] temporaries
  off = receivers != senders
  receivers, senders = receivers[off], senders[off]
  graph.add_edges_from(zip(senders.tolist(), receivers.tolist()))
  return graph


def components(W_or_A: np.ndarray, directed: bool = False) -> list[set[int]]:
  """Connected components (strongly connected ones on a directed graph), largest first."""
  graph = support_graph(W_or_A, directed)
  found = nx.strongly_connected_components(graph) if directed else nx.connected_components(graph)
  return sorted(found, key=len, reverse=True)


def check_connected(W_or_A: np.ndarray, what: str, directed: bool = False) -> None:
  """Raises if the graph splits into several (strongly) connected components."""
  parts = components(W_or_A, directed)
  if len(parts) > 1:
    sizes = ", ".join(str(len(p)) for p in parts[:8]) + (", ..." if len(parts) > 8 else "")
    kind = "strongly connected" if directed else "connected"
    raise ValueError(f"{what} is disconnected: {len(parts)} {kind} components (sizes {sizes}); "
                     "gossip cannot reach consensus across components.")


def check_mixing_matrix(W: np.ndarray, *, doubly_stochastic: bool = True,
                        what: str = "mixing matrix", column_stochastic: bool = False) -> None:
  """Square, finite, nonnegative, rows summing to 1, and columns too when `doubly_stochastic`;
  with `column_stochastic`, columns summing to 1 instead of rows (push-sum's W).

  Gossip averaging x <- W x keeps the node mean only if W is doubly stochastic; row-stochastic W
  (directed graphs) reaches a consensus that is a weighted mean instead.
  """
  W = np.asarray(W)
  if W.ndim != 2 or W.shape[0] != W.shape[1]:
    raise ValueError(f"{what} must be square [N, N], got shape {W.shape}.")
  if not np.all(np.isfinite(W)):
    i, j = np.argwhere(~np.isfinite(W))[0]
    raise ValueError(f"{what} has a non-finite entry: W[{i}, {j}] = {W[i, j]}.")
  if (W < -_ATOL).any():
    i, j = np.argwhere(W < -_ATOL)[0]
    raise ValueError(f"{what} has negative weights, e.g. W[{i}, {j}] = {W[i, j]:.6g}; mixing "
                     "weights must be >= 0.")
  if column_stochastic:
    _require_unit_sums(W, 0, what, "; with column-stochastic weights every node must split all "
                       "of its mass.")
    return
  _require_unit_sums(W, 1, what, "; every node's weights must sum to 1.")
  if doubly_stochastic:
    _require_unit_sums(W, 0, what, ", so W is not doubly stochastic and gossip would not "
                       "preserve the node mean. Set topology.directed=True to allow "
                       "row-stochastic W.")


def _require_unit_sums(W: np.ndarray, axis: int, what: str, consequence: str) -> None:
  """Rows (axis 1) or columns (axis 0) of W sum to 1, else a ValueError naming the first bad
  one, up to 8 of them, and `consequence`."""
  sums = W.sum(axis=axis)
  bad = np.flatnonzero(np.abs(sums - 1) > 1e-6)
  if bad.size:
    line = "row" if axis == 1 else "column"
    raise ValueError(f"{what}: {line} {bad[0]} sums to {sums[bad[0]]:.6g} ({line}s "
                     f"{bad[:8].tolist()} do not sum to 1){consequence}")
