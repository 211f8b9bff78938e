"""Time-varying graphs: a new adjacency every round, a pure function of (seed, round).

* `one_peer_exponential` (Ying et al., "Exponential Graph is Provably Efficient for
  Decentralized Deep Training", NeurIPS 2021): in round t node i averages with node
  i + 2^(t mod tau), tau = ceil(log2 N), so W_t = (I + P^(2^k)) / 2 is circulant and doubly
  stochastic though not symmetric; when N is a power of two, one period of tau rounds averages
  exactly: W_{tau-1} ... W_0 = 11^T / N.
* `random_neighbors` (the "random" topology of the DFedSAM reference code, Shi et al.,
  "Improving the Model Consistency of Decentralized Federated Learning", ICML 2023): every round
  each node draws `degree` distinct random peers. Symmetrised (an edge if either side drew it)
  with doubly stochastic weights by default; with `directed=True` each node averages itself and
  its draws (row-stochastic, as in the reference code).
* `random_pull` (the sparse `random` graph of Zhu et al., "A Single Merging Suffices: Recovering
  Server-based Learning Performance in Decentralized Learning", 2025; reference
  github.com/Raiden-Zhu/ICLR-2026-Grokking-in-Decentralized-Learning, core/gossip_matrix.py
  `create_random_r_gossip_rows`): every round each node i pulls k_i distinct random peers,
  k_i = floor(r) plus one more with probability frac(r), so E[k_i] = r = `expected_degree`
  (the reference's r; 0.2 in the paper's figure 1), and averages itself and its pulls uniformly,
  w_ij = 1 / (1 + k_i). Directed and row- but not column-stochastic by construction (the node
  mean drifts); `topologies.make` accepts it as such without `directed=True`. Those uniform
  weights are what `weights=metropolis_hastings` (the default) and `uniform` give on a directed
  graph; `max_degree` gives 1 / (1 + max_i k_i) per pull instead. Deviation: the reference draws
  from numpy's global random state (not replayable); here round t's draw is a function of
  (seed, t), so a resumed run replays it.
"""
from __future__ import annotations

import numpy as np

from topologies.topology import Graph


def one_peer_exponential(num_nodes: int) -> Graph:
  n = num_nodes
  if n < 2:
    raise ValueError(f"topology 'one_peer_exponential' needs num_nodes >= 2, got num_nodes={n}.")
  tau = max(1, (n - 1).bit_length())  # ceil(log2 N)
  i = np.arange(n)

  def adjacency(t: int) -> np.ndarray:
    A = np.zeros((n, n), bool)
    A[i, (i + (1 << (t % tau))) % n] = True
    return A

  return Graph(adjacency, time_varying=True, directed=True, period=tau, width=2)


def random_neighbors(num_nodes: int, *, seed: int, degree: int, directed: bool = False) -> Graph:
  n, k = num_nodes, int(degree)
  if not 1 <= k < n:
    raise ValueError(f"topology 'random_neighbors' needs 1 <= degree < num_nodes, got "
                     f"degree={degree}, num_nodes={n}.")
  if seed < 0:
    raise ValueError(f"topology 'random_neighbors' needs a seed >= 0, got {seed}.")

  def adjacency(t: int) -> np.ndarray:
    rng = np.random.default_rng([seed, t])
    scores_NxN = rng.random((n, n))
    np.fill_diagonal(scores_NxN, np.inf)  # never draw oneself
    picks_NxK = np.argpartition(scores_NxN, k - 1, axis=1)[:, :k]
    A = np.zeros((n, n), bool)
    np.put_along_axis(A, picks_NxK, True, axis=1)
    return A if directed else A | A.T

  return Graph(adjacency, time_varying=True, directed=directed,
               width=k + 1 if directed else None)


def random_pull(num_nodes: int, *, seed: int, expected_degree: float) -> Graph:
  n, r = num_nodes, float(expected_degree)
  if not 0 <= r <= n - 1:
    raise ValueError(f"topology 'random_pull' needs 0 <= expected_degree <= num_nodes - 1 = "
                     f"{n - 1}, got expected_degree={expected_degree}.")
  if seed < 0:
    raise ValueError(f"topology 'random_pull' needs a seed >= 0, got {seed}.")
  whole, frac = int(np.floor(r)), r - np.floor(r)

  def adjacency(t: int) -> np.ndarray:
    rng = np.random.default_rng([seed, t])
    scores_NxN = rng.random((n, n))
    np.fill_diagonal(scores_NxN, np.inf)  # never pull oneself
    pulls_N = whole + (rng.random(n) < frac)  # floor(r), plus one with probability frac(r)
    rank_NxN = np.argsort(np.argsort(scores_NxN, axis=1), axis=1)  # a random order of the peers
    return rank_NxN < pulls_N[:, None]

  return Graph(adjacency, time_varying=True, directed=True, width=int(np.ceil(r)) + 1,
               row_stochastic=True)


TIME_VARYING_GRAPHS = {"random_pull": random_pull,"one_peer_exponential": one_peer_exponential,
                       "random_neighbors": random_neighbors}
