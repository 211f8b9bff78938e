"""Static communication graphs as symmetric 0/1 adjacency matrices without self-loops."""
from __future__ import annotations

import numpy as np


def ring(n: int, **_) -> np.ndarray:
  if n < 3:
    raise ValueError(f"topology 'ring' needs num_nodes >= 3, got {n}.")
  A = np.zeros((n, n))
  i = np.arange(n)
  A[i, (i + 1) % n] = A[(i + 1) % n, i] = 1
  return A


def complete(n: int, **_) -> np.ndarray:
  if n < 2:
    raise ValueError(f"topology 'complete' needs num_nodes >= 2, got {n}.")
  return np.ones((n, n)) - np.eye(n)


STATIC_GRAPHS = {"ring": ring, "complete": complete}
