"""Mixing weights from an adjacency matrix (numpy only).

`A[i, j] = True` means node i receives node j's model; row i of W holds node i's averaging
weights, so W is always row-stochastic, and doubly stochastic on undirected graphs with
Metropolis-Hastings or max-degree weights (Xiao & Boyd, "Fast linear iterations for distributed
averaging", 2004; Boyd et al., "Randomized gossip algorithms", 2006).

On directed graphs every scheme averages uniformly over a node's in-neighbours and itself
(`max_degree` uses the largest in-degree instead): the Metropolis-Hastings rule needs symmetry.

`column_uniform` is the push form instead (push-sum / Stochastic Gradient Push, Assran et al.
2019, gossip/mixing_manager.py `UniformMixing` of facebookresearch/stochastic_gradient_push):
node j splits its mass uniformly over its out-neighbours and itself, w_ij = 1 / (1 + out-degree
of j), so W is column-stochastic (rows need not sum to 1); on an undirected graph it is the
transpose of the in-average. Only push-sum mixes with it.
"""
from __future__ import annotations

import numpy as np


def degrees(adjacency: np.ndarray) -> np.ndarray:
  """In-degree of every node (its number of neighbours on an undirected graph)."""
  return np.count_nonzero(adjacency, axis=1).astype(int)


def _fill_diagonal_remainder(W: np.ndarray) -> np.ndarray:
  np.fill_diagonal(W, 0.0)
  np.fill_diagonal(W, 1.0 - W.sum(axis=1))
  return W


def in_average(adjacency: np.ndarray) -> np.ndarray:
  """w_ij = 1 / (d_i + 1) on i's in-neighbours and itself (row-stochastic)."""
  W = adjacency / (degrees(adjacency)[:, None] + 1.0)
  np.fill_diagonal(W, 1.0 / (degrees(adjacency) + 1.0))
  return W


def metropolis_hastings(adjacency: np.ndarray, directed: bool = False) -> np.ndarray:
  """w_ij = 1 / (1 + max(d_i, d_j)) on edges, w_ii = 1 - sum_j w_ij. Symmetric, doubly stochastic.
  Directed graphs: `in_average`."""
  if directed:
    return in_average(adjacency)
  d = degrees(adjacency)
  i, j = np.nonzero(adjacency)  # only the edges: no [N, N] temporaries beyond W itself
  W = np.zeros(adjacency.shape)
  W[i, j] = 1.0 / (1.0 + np.maximum(d[i], d[j]))
  return _fill_diagonal_remainder(W)


def uniform(adjacency: np.ndarray, directed: bool = False) -> np.ndarray:
  """w_ij = 1 / (d + 1) on edges and the diagonal; doubly stochastic only on regular graphs."""
  d = degrees(adjacency)
  if not directed and d.min() != d.max():
    raise ValueError(f"weights='uniform' needs a regular graph; degrees range {d.min()}..{d.max()}. "
                     "Use weights='metropolis_hastings' or 'max_degree'.")
  return in_average(adjacency)


def max_degree(adjacency: np.ndarray, directed: bool = False) -> np.ndarray:
  """w_ij = 1 / (1 + d_max) on edges, w_ii = 1 - d_i / (1 + d_max). Symmetric, doubly stochastic
  on undirected graphs; slower than Metropolis-Hastings on irregular graphs."""
  del directed  # the same formula on in-degrees
  W = adjacency / (1.0 + degrees(adjacency).max())
  return _fill_diagonal_remainder(W)


def column_uniform(adjacency: np.ndarray, directed: bool = False) -> np.ndarray:
  """w_ij = 1 / (1 + out-degree of j) on j's out-neighbours i and on j itself (column-stochastic)."""
  del directed  # the same formula on any graph
  out_degree = adjacency.sum(axis=0).astype(int)
  W = adjacency / (out_degree[None, :] + 1.0)
  np.fill_diagonal(W, 1.0 / (out_degree + 1.0))
  return W


# Weights whose columns, not rows, sum to 1 (checked as such by `topologies.make`).
COLUMN_STOCHASTIC_WEIGHTS = {"column_uniform"}


def lazy(W: np.ndarray, laziness: float) -> np.ndarray:
  """W <- (1 - beta) W + beta I: keeps a share beta of a node's own model (beta = laziness)."""
  if laziness == 0:
    return W
  return (1.0 - laziness) * W + laziness * np.eye(W.shape[0])


WEIGHTS = {"metropolis_hastings": metropolis_hastings, "uniform": uniform,
           "max_degree": max_degree, "column_uniform": column_uniform}
