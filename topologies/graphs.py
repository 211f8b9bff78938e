"""Static communication graphs as adjacency matrices.

`A[i, j] = True` means node i receives node j's model. Undirected graphs are symmetric; no graph
has self-loops (the mixing weights put the self weight on the diagonal). Each builder takes
`num_nodes` and only the keyword options it uses; `topologies.make` passes those by name.

References: exponential graphs (Ying et al., "Exponential Graph is Provably Efficient for
Decentralized Deep Training", NeurIPS 2021); Erdos-Renyi, random regular and Watts-Strogatz
small-world graphs are drawn with networkx and redrawn (seeded) until connected.
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np

_MAX_DRAWS = 1000  # redraws of a random graph before giving up on connectivity


def _need(ok: bool, name: str, requirement: str, n: int, hint: str = ""):
  if not ok:
    raise ValueError(f"topology {name!r} needs {requirement}, got num_nodes={n}.{hint}")


def _from_edges(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
  A = np.zeros((n, n), bool)
  A[i, j] = A[j, i] = True
  np.fill_diagonal(A, False)
  return A


def _from_networkx(graph: nx.Graph, n: int) -> np.ndarray:
  A = nx.to_numpy_array(graph, nodelist=range(n), dtype=float) > 0
  np.fill_diagonal(A, False)
  return A


def near_square_factors(n: int) -> tuple[int, int] | None:
  """(rows, cols) with rows <= cols, rows * cols = n, rows >= 2 and as close to sqrt(n) as
  possible; None when n has no such factorisation (n prime or n < 4)."""
  for rows in range(math.isqrt(n), 1, -1):
    if n % rows == 0:
      return rows, n // rows
  return None


def _factorable_neighbours(n: int) -> str:
  below = next((m for m in range(n - 1, 3, -1) if near_square_factors(m)), None)
  above = next(m for m in range(n + 1, 2 * n + 5) if near_square_factors(m))
  return " or ".join(str(m) for m in (below, above) if m)


def ring(num_nodes: int) -> np.ndarray:
  """Cycle i -- i+1 (mod N); degree 2."""
  n = num_nodes
  _need(n >= 3, "ring", "num_nodes >= 3", n)
  i = np.arange(n)
  return _from_edges(n, i, (i + 1) % n)


def _lattice(name: str, n: int, wrap: bool) -> np.ndarray:
  shape = near_square_factors(n)
  _need(shape is not None, name, "num_nodes = rows x cols with rows, cols >= 2", n,
        f" {n} has no such factorisation; try num_nodes = {_factorable_neighbours(n)}.")
  rows, cols = shape
  r, c = np.divmod(np.arange(n), cols)
  pairs = []
  for dr, dc in ((0, 1), (1, 0)):
    rr, cc = r + dr, c + dc
    keep = np.ones(n, bool) if wrap else (rr < rows) & (cc < cols)
    pairs.append((np.flatnonzero(keep), ((rr % rows) * cols + cc % cols)[keep]))
  i = np.concatenate([p[0] for p in pairs])
  j = np.concatenate([p[1] for p in pairs])
  return _from_edges(n, i, j)


def torus(num_nodes: int) -> np.ndarray:
  """2-D grid rows x cols (the most square factorisation of N) with wrap-around; degree 4
  (3 or 2 where a side has length 2, since both wrap neighbours coincide)."""
  return _lattice("torus", num_nodes, wrap=True)


def grid(num_nodes: int) -> np.ndarray:
  """2-D grid rows x cols (the most square factorisation of N) without wrap-around."""
  return _lattice("grid", num_nodes, wrap=False)


def complete(num_nodes: int) -> np.ndarray:
  """Every pair linked; with Metropolis-Hastings weights W = 11^T / N (exact averaging)."""
  n = num_nodes
  _need(n >= 2, "complete", "num_nodes >= 2", n)
  return ~np.eye(n, dtype=bool)


def star(num_nodes: int) -> np.ndarray:
  """Node 0 linked to every other node."""
  n = num_nodes
  _need(n >= 3, "star", "num_nodes >= 3", n)
  leaves = np.arange(1, n)
  return _from_edges(n, np.zeros_like(leaves), leaves)


def hypercube(num_nodes: int) -> np.ndarray:
  """i -- i XOR 2^k for k < log2 N; degree log2 N."""
  n = num_nodes
  power = n >= 2 and n & (n - 1) == 0
  _need(power, "hypercube", "num_nodes a power of two >= 2", n,
        "" if power else f" Try {2 ** max(1, n.bit_length() - 1)} or {2 ** n.bit_length()}.")
  i = np.arange(n)
  dims = range(n.bit_length() - 1)
  return _from_edges(n, np.tile(i, len(dims)), np.concatenate([i ^ (1 << k) for k in dims]))


def exponential(num_nodes: int, directed: bool = False) -> np.ndarray:
  """Static exponential graph: i -- i +- 2^k (mod N) for 2^k < N.

  With `directed=True`, Ying et al.'s form: node i receives from i + 2^k only (in-degree
  ceil(log2 N)); with uniform in-weights W is circulant, hence still doubly stochastic.
  """
  n = num_nodes
  _need(n >= 2, "exponential", "num_nodes >= 2", n)
  i = np.arange(n)
  hops = [1 << k for k in range((n - 1).bit_length())]
  A = np.zeros((n, n), bool)
  for h in hops:
    A[i, (i + h) % n] = True
  A &= ~np.eye(n, dtype=bool)
  return A if directed else A | A.T


def _draw_connected(draw, num_nodes: int, seed: int, failure: str) -> np.ndarray:
  """Calls draw(graph_seed) with seeds from one seeded stream until the graph is connected."""
  rng = np.random.default_rng(seed)
  for _ in range(_MAX_DRAWS):
    graph = draw(int(rng.integers(2**31)))
    if nx.is_connected(graph):
      return _from_networkx(graph, num_nodes)
  raise ValueError(failure)


def erdos_renyi(num_nodes: int, *, seed: int, edge_prob: float | None = None) -> np.ndarray:
  """G(N, p), redrawn with the seed until connected. edge_prob None: p = 2 ln(N) / N (capped at
  1), twice the connectivity threshold."""
  n = num_nodes
  _need(n >= 2, "erdos_renyi", "num_nodes >= 2", n)
  p = min(1.0, 2 * math.log(n) / n) if edge_prob is None else float(edge_prob)
  if not 0 < p <= 1:
    raise ValueError(f"topology 'erdos_renyi' needs 0 < edge_prob <= 1, got {edge_prob}.")
  return _draw_connected(
      lambda s: nx.gnp_random_graph(n, p, seed=s), n, seed,
      f"topology 'erdos_renyi': no connected G(N={n}, p={p:g}) in {_MAX_DRAWS} draws; "
      f"raise edge_prob above ln(N)/N = {math.log(n) / n:.3g}.")


def random_regular(num_nodes: int, *, seed: int, degree: int) -> np.ndarray:
  """Uniformly random k-regular graph (k = degree), redrawn with the seed until connected."""
  n, k = num_nodes, int(degree)
  if not 2 <= k < n or (n * k) % 2:
    raise ValueError(f"topology 'random_regular' needs 2 <= degree < num_nodes and "
                     f"degree * num_nodes even, got degree={degree}, num_nodes={n}.")
  return _draw_connected(
      lambda s: nx.random_regular_graph(k, n, seed=s), n, seed,
      f"topology 'random_regular': no connected {k}-regular graph on {n} nodes in "
      f"{_MAX_DRAWS} draws; raise degree.")


def small_world(num_nodes: int, *, seed: int, degree: int, rewire_prob: float) -> np.ndarray:
  """Watts-Strogatz: ring lattice to the degree/2 nearest on each side, each edge rewired with
  probability rewire_prob; redrawn with the seed until connected."""
  n, k = num_nodes, int(degree)
  if k % 2 or not 2 <= k < n:
    raise ValueError(f"topology 'small_world' needs an even degree with 2 <= degree < num_nodes, "
                     f"got degree={degree}, num_nodes={n}.")
  if not 0 <= rewire_prob <= 1:
    raise ValueError(f"topology 'small_world' needs 0 <= rewire_prob <= 1, got {rewire_prob}.")
  graph = nx.connected_watts_strogatz_graph(n, k, float(rewire_prob), tries=_MAX_DRAWS,
                                            seed=int(seed))
  return _from_networkx(graph, n)


STATIC_GRAPHS = {
    "ring": ring, "torus": torus, "grid": grid, "complete": complete, "star": star,
    "hypercube": hypercube, "exponential": exponential, "erdos_renyi": erdos_renyi,
    "random_regular": random_regular, "small_world": small_world,
}
