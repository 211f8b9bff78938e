"""The Topology object: mixing matrix per round, sparse neighbour form, properties."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np


def to_neighbors(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Dense [N, N] -> padded neighbour form (indices [N, K], weights [N, K]), self included.

  K = the largest number of nonzeros in a row; padded slots point at the node with weight 0.
  """
  n = W.shape[0]
  nz = [np.flatnonzero(W[i]) for i in range(n)]
  k = max(len(c) for c in nz)
  indices = np.tile(np.arange(n)[:, None], (1, k)).astype(np.int32)
  weights = np.zeros((n, k), W.dtype)
  for i, cols in enumerate(nz):
    indices[i, : len(cols)] = cols
    weights[i, : len(cols)] = W[i, cols]
  return indices, weights


def spectral_gap(W: np.ndarray) -> float:
  """1 - |lambda_2|: one minus the second largest eigenvalue modulus."""
  mods = np.sort(np.abs(np.linalg.eigvals(W)))[::-1]
  return float(1.0 - mods[1]) if len(mods) > 1 else 1.0


@dataclasses.dataclass
class Topology:
  """A communication graph. `matrix(round)` gives W_t; static graphs ignore the round."""
  name: str
  num_nodes: int
  _matrix_fn: Callable[[int], np.ndarray]
  time_varying: bool = False
  directed: bool = False
  _static: Optional[np.ndarray] = None

  def matrix(self, round_index: int = 0) -> np.ndarray:
    if not self.time_varying:
      if self._static is None:
        self._static = self._matrix_fn(0)
      return self._static
    return self._matrix_fn(round_index)

  def neighbors(self, round_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return to_neighbors(self.matrix(round_index))

  def properties(self) -> dict:
    W = self.matrix(0)
    off = (W != 0) & ~np.eye(self.num_nodes, dtype=bool)
    deg = off.sum(axis=1)
    return {
        "name": self.name, "num_nodes": self.num_nodes, "time_varying": self.time_varying,
        "directed": self.directed, "degree_min": int(deg.min()), "degree_max": int(deg.max()),
        "spectral_gap": spectral_gap(W), "symmetric": bool(np.allclose(W, W.T)),
        "doubly_stochastic": bool(np.allclose(W.sum(0), 1) and np.allclose(W.sum(1), 1)),
    }
