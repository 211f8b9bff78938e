"""A synthetic strongly convex problem: heterogeneous least squares, one problem per node.

Node i holds n samples, the rows of A_i [n, d] and b_i [n]; its loss is

    f_i(x) = (1 / (2n)) ||A_i x - b_i||^2,      the global objective F = (1/N) sum_i f_i.

Construction (numpy, from `seed`; no files): A_i = sqrt(n) U_i diag(sqrt(lambda_i)) V_i^T with
U_i [n, d] orthonormal columns and V_i [d, d] orthogonal, both Haar-random per node, and the
eigenvalues lambda_i spread evenly over [MU, L] = [0.1, 1]. So the Hessian of f_i is
(1/n) A_i^T A_i = V_i diag(lambda_i) V_i^T exactly:

    every f_i is L-smooth with L = 1 and MU-strongly convex with MU = 0.1, hence so is F
    (its Hessian is the mean of the nodes'; its extreme eigenvalues lie in [0.1, 1]),

and a constant step eta <= 1/L is stable for every node's gradient step; eta = 0.05 leaves room
for the algorithms' network terms. Targets: b_i = A_i (x0 + h z_i) with x0, z_i ~ N(0, I_d)
and h = `heterogeneity`: node i's own minimizer is x0 + h z_i, so h = 0 gives nodes that share
one minimizer x* = x0 (no gradient heterogeneity: grad f_i(x*) = 0 on every node, while the
A_i still differ) and the gradient dissimilarity (1/N) sum_i ||grad f_i(x*)||^2 grows as h^2.
No noise is added. Requires n >= d.

The dataset is the rows stacked node by node, with `node_ids` saying whose each row is: the
driver gives node i exactly its rows (dfl/experiment.py), whatever data.partition says. The test
set is the training set itself, so the evaluator's test_loss is F's value at the averaged model
(equal shards: the mean over all rows is (1/N) sum_i f_i). The exact minimizer x* is computed on
the host by dfl/optimum.py.
"""
from __future__ import annotations

import numpy as np

MU, L = 0.1, 1.0  # strong convexity and smoothness of every f_i (and of F)


def _orthonormal_columns(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
  """Haar-random [rows, cols] with orthonormal columns (QR with the signs of R fixed)."""
  q, r = np.linalg.qr(rng.normal(size=(rows, cols)))
  return q * np.sign(np.diag(r))


def least_squares_problem(num_nodes: int, dim: int, samples_per_node: int,
                          heterogeneity: float, seed: int):
  """Returns (A [N*n, d] float64, b [N*n] float64, node_ids [N*n] int32), rows node by node."""
  n, d = samples_per_node, dim
  if n < d:
    raise ValueError(f"data.samples_per_node={n} must be >= data.dim={d} (a node's f_i is "
                     "strongly convex only with at least d rows).")
  if not heterogeneity >= 0:
    raise ValueError(f"data.heterogeneity must be >= 0, got {heterogeneity}.")
  rng = np.random.default_rng(seed)
  lambdas = np.linspace(L, MU, d) if d > 1 else np.array([L])
  x0 = rng.normal(size=d)
  rows_A, rows_b = [], []
  for _ in range(num_nodes):
    u = _orthonormal_columns(rng, n, d)
    v = _orthonormal_columns(rng, d, d)
    a = np.sqrt(n) * (u * np.sqrt(lambdas)) @ v.T
    target = x0 + heterogeneity * rng.normal(size=d)
    rows_A.append(a)
    rows_b.append(a @ target)
  node_ids = np.repeat(np.arange(num_nodes, dtype=np.int32), n)
  return np.concatenate(rows_A), np.concatenate(rows_b), node_ids
