"""The Topology object: the mixing matrix W_t of every round, its sparse neighbour form, and the
properties a researcher checks before trusting it (degrees, connectivity, spectral gap,
symmetry, stochasticity, diameter)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional

import networkx as nx
import numpy as np

from topologies.checks import components, support_graph

# Rounds averaged for the expected W of a random time-varying graph (no period).
RANDOM_SAMPLE_ROUNDS = 32


class Graph(NamedTuple):
  """What a graph builder returns: who receives from whom in every round.

  adjacency(round) -> [N, N] bool, A[i, j] = node i receives node j's model (no self-loops).
  matrix(round) -> explicit W (weights given by the user, e.g. in an edge file), or None.
  """
  adjacency: Callable[[int], np.ndarray]
  time_varying: bool = False
  directed: bool = False
  period: Optional[int] = None  # W_t = W_{t mod period}; None: static, or random every round
  width: Optional[int] = None  # known bound on nonzeros per row of W (self included)
  matrix: Optional[Callable[[int], np.ndarray]] = None
  # W is row- but not column-stochastic by construction (e.g. random_pull): columns go unchecked
  # without `directed=True`.
  row_stochastic: bool = False


def to_neighbors(W: np.ndarray, width: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """Dense [N, N] -> padded neighbour form (indices [N, K], weights [N, K]), self included.

  K = `width`, or the largest number of nonzeros in a row. Nonzeros come first in column order;
  padded slots point at the node itself with weight 0. A fixed `width` keeps the shapes of a
  time-varying graph equal across rounds (no recompilation).
  """
  n = W.shape[0]
  rows, cols = np.nonzero(W)  # row by row, columns increasing: O(nonzeros) memory
  count_N = np.bincount(rows, minlength=n)
  most = int(count_N.max())
  k = most if width is None else int(width)
  if k < most:
    raise ValueError(f"to_neighbors: a row has {most} nonzeros, more than width={k}.")
  slot = np.arange(len(rows)) - (np.cumsum(count_N) - count_N)[rows]  # position in its row
  indices = np.repeat(np.arange(n, dtype=np.int32)[:, None], k, axis=1)  # padding: self
  weights = np.zeros((n, k), W.dtype)
  indices[rows, slot] = cols
  weights[rows, slot] = W[rows, cols]
  return indices, weights


def spectral_gap(W: np.ndarray) -> float:
  """1 - |lambda_2|: one minus the second largest eigenvalue modulus of W."""
  W = np.asarray(W, float)
  if len(W) < 2:
    return 1.0
  eig = np.linalg.eigvalsh(W) if np.allclose(W, W.T) else np.linalg.eigvals(W)
  mods = np.sort(np.abs(eig))[::-1]
  return float(max(0.0, 1.0 - mods[1]))


def _is_symmetric(W):
  return bool(np.allclose(W, W.T, atol=1e-12))


def _is_doubly_stochastic(W):
  return bool(np.allclose(W.sum(0), 1) and np.allclose(W.sum(1), 1))


@dataclasses.dataclass(eq=False)
class Topology:
  """A communication graph. `matrix(round)` gives W_t ([N, N] numpy, read-only); static graphs
  ignore the round. `neighbors(round)` gives the padded sparse form, with the same width K in
  every round."""
  name: str
  num_nodes: int
  _matrix_fn: Callable[[int], np.ndarray]
  time_varying: bool = False
  directed: bool = False
  period: Optional[int] = None  # time-varying with W_t = W_{t mod period}
  num_rounds: Optional[int] = None  # horizon of the run, when known (schedules need it)
  width_bound: Optional[int] = None
  description: dict = dataclasses.field(default_factory=dict)  # weights, laziness, options
  dense_rounds: tuple = ()  # rounds on a schedule's dense topology (empty: no schedule)
  column_stochastic: bool = False  # every W_t checked to have columns summing to 1 (push-sum)
  _static: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)

  def matrix(self, round_index: int = 0) -> np.ndarray:
    if not self.time_varying:
      if self._static is None:
        self._static = self._matrix_fn(0)
        self._static.setflags(write=False)
      return self._static
    if self.period:
      round_index %= self.period
    return self._matrix_fn(int(round_index))

  def neighbors(self, round_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(indices [N, K], weights [N, K]) of round `round_index`, K = `neighbor_width`."""
    return to_neighbors(self.matrix(round_index), self.neighbor_width)

  @functools.cached_property
  def neighbor_width(self) -> int:
    """K: the most nonzeros in a row of any W_t of the run (self included)."""
    if self.width_bound is not None:
      return int(self.width_bound)
    if not self.time_varying:
      rounds = [0]
    elif self.period:
      rounds = range(self.period)
    elif self.num_rounds:
      rounds = range(self.num_rounds)
    else:
      return self.num_nodes
    return max(int(np.count_nonzero(self.matrix(t), axis=1).max()) for t in rounds)

  def sample_rounds(self) -> range:
    """Rounds that represent the graph: one for static, a period, or a sample of random rounds."""
    if not self.time_varying:
      return range(1)
    return range(self.period or RANDOM_SAMPLE_ROUNDS)

  def expected_matrix(self) -> np.ndarray:
    """W itself (static), its mean over a period, or over the first sample rounds (random)."""
    return np.mean([self.matrix(t) for t in self.sample_rounds()], axis=0)

  def properties(self) -> dict:
    """Degrees, connectivity, spectral gap (of W or its expectation), stochasticity, diameter."""
    rounds = self.sample_rounds()
    Ws = [self.matrix(t) for t in rounds]
    off = ~np.eye(self.num_nodes, dtype=bool)
    deg_RxN = np.array([((W != 0) & off).sum(axis=1) for W in Ws])
    union = np.any([W != 0 for W in Ws], axis=0)
    parts = components(union, self.directed)
    diameter = (nx.diameter(support_graph(union, self.directed)) if len(parts) == 1 else None)
    if not self.time_varying:
      gap_of = "W"
    elif self.period:
      gap_of = f"mean of W over one period ({self.period} rounds)"
    else:
      gap_of = f"mean of W over rounds 0..{len(rounds) - 1} (random graph)"
    props = {
        "name": self.name, "num_nodes": self.num_nodes, "time_varying": self.time_varying,
        "period": self.period, "directed": self.directed, **self.description,
        "degree_min": int(deg_RxN.min()), "degree_max": int(deg_RxN.max()),
        "degree_mean": float(deg_RxN.mean()),
        "connected": len(parts) == 1, "num_components": len(parts),
        "diameter": diameter,
        "spectral_gap": spectral_gap(self.expected_matrix()), "spectral_gap_of": gap_of,
        "symmetric": all(_is_symmetric(W) for W in Ws),
        "doubly_stochastic": all(_is_doubly_stochastic(W) for W in Ws),
        "row_stochastic": all(bool(np.allclose(W.sum(1), 1)) for W in Ws),
        "neighbor_width": self.neighbor_width,
    }
    if self.time_varying and self.period:
      # W_{p-1} ... W_0: one period of gossip; its gap is 1 when a period averages exactly.
      product = functools.reduce(lambda acc, W: W @ acc, Ws, np.eye(self.num_nodes))
      props["spectral_gap_period_product"] = spectral_gap(product)
    return props
