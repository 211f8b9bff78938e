"""Mixing weights from an undirected adjacency matrix (numpy only)."""
from __future__ import annotations

import numpy as np


def degrees(adjacency: np.ndarray) -> np.ndarray:
  return adjacency.sum(axis=1).astype(int)


def metropolis_hastings(adjacency: np.ndarray) -> np.ndarray:
  """w_ij = 1 / (1 + max(d_i, d_j)) on edges, w_ii = 1 - sum_j w_ij. Symmetric, doubly stochastic."""
  d = degrees(adjacency)
  W = np.where(adjacency > 0, 1.0 / (1.0 + np.maximum(d[:, None], d[None, :])), 0.0)
  np.fill_diagonal(W, 0.0)
  np.fill_diagonal(W, 1.0 - W.sum(axis=1))
  return W


def uniform(adjacency: np.ndarray) -> np.ndarray:
  """w_ij = 1 / (d + 1) on edges and the diagonal; doubly stochastic only on regular graphs."""
  d = degrees(adjacency)
  if d.min() != d.max():
    raise ValueError(f"weights='uniform' needs a regular graph; degrees range {d.min()}..{d.max()}. "
                     "Use weights='metropolis_hastings' or 'max_degree'.")
  W = (adjacency > 0).astype(float) / (d[0] + 1.0)
  np.fill_diagonal(W, 1.0 / (d[0] + 1.0))
  return W


WEIGHTS = {"metropolis_hastings": metropolis_hastings, "uniform": uniform}
