"""The exact minimizer x* of the global objective F = (1/N) sum_i f_i, computed on the host.

Node i's loss is the mean over its n_i samples plus the L2 term of model.l2, so F weights sample
s of node i by w_s = 1 / (N n_i) (rows no node holds get 0):

    F(x) = sum_s w_s loss(x; a_s, y_s) + (l2 / 2) ||x||^2.

* `linear` (least squares): x* solves the normal equations (A^T D A + l2 I) x = A^T D b with
  D = diag(w), in float64.
* `logreg` with l2 > 0 (strongly convex): multinomial logistic regression, minimised with
  scipy's Newton-CG on exact Hessian-vector products, in float64, to a gradient norm of
  ~1e-10 or less; the kernel and the bias both carry the L2 term (as in the training loss).

Both read the float32 data the nodes train on (cast to float64), so x* is the minimizer of
exactly the objective the algorithms run on. The evaluator reports ||x̄ - x*||^2 and
(1/N) sum_i ||x_i - x*||^2 (`distance_to_optimum`, `distance_to_optimum_local_mean`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

# Models whose global objective has a unique minimizer dfl computes: linear always (F is
# strongly convex by construction), logreg when model.l2 > 0.
HAS_OPTIMUM = ("linear", "logreg")


def sample_weights(shards: list[np.ndarray], num_rows: int) -> np.ndarray:
  """w [num_rows]: 1 / (N n_i) on the rows of node i (a row held twice counts twice)."""
  w = np.zeros(num_rows, np.float64)
  for part in shards:
    np.add.at(w, np.asarray(part), 1.0 / (len(shards) * len(part)))
  return w


def least_squares_optimum(a_SxD: np.ndarray, b_S: np.ndarray, w_S: np.ndarray,
                          l2: float = 0.0) -> np.ndarray:
  """argmin_x sum_s w_s (a_s x - b_s)^2 / 2 + (l2/2)||x||^2, float64 [D]."""
  a = np.asarray(a_SxD, np.float64).reshape(len(b_S), -1)
  wa = a * w_S[:, None]
  return np.linalg.solve(wa.T @ a + l2 * np.eye(a.shape[1]), wa.T @ np.asarray(b_S, np.float64))


def logreg_optimum(x_SxD: np.ndarray, y_S: np.ndarray, w_S: np.ndarray, num_classes: int,
                   l2: float, gtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
  """argmin over (W [D, C], c [C]) of sum_s w_s CE(softmax(x_s W + c), y_s) + (l2/2)(|W|^2 +
  |c|^2), float64; Newton-CG with exact Hessian-vector products."""
  from scipy import optimize  # host-only dependency, imported where it is needed

  if not l2 > 0:
    raise ValueError(f"logistic regression has a unique minimizer only with model.l2 > 0, "
                     f"got {l2}.")
  keep = w_S > 0
  x = np.asarray(x_SxD, np.float64).reshape(len(y_S), -1)[keep]
  y, w = np.asarray(y_S)[keep], w_S[keep]
  d, c = x.shape[1], num_classes
  onehot = np.eye(c)[y]

  def unpack(theta):
    return theta[:d * c].reshape(d, c), theta[d * c:]

  def probabilities(theta):
    kernel, bias = unpack(theta)
    logits = x @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True), logits

  def value_and_grad(theta):
    p, logits = probabilities(theta)
    log_z = np.log(np.exp(logits).sum(axis=1))
    value = np.sum(w * (log_z - np.sum(onehot * logits, axis=1))) + 0.5 * l2 * theta @ theta
    r = w[:, None] * (p - onehot)
    return value, np.concatenate([(x.T @ r).ravel(), r.sum(axis=0)]) + l2 * theta

  cache = {}

  def hessp(theta, v):
    key = theta.tobytes()
    if key not in cache:
      cache.clear()
      cache[key] = probabilities(theta)[0]
    p = cache[key]
    dkernel, dbias = unpack(v)
    dlogits = x @ dkernel + dbias
    dp = p * (dlogits - np.sum(p * dlogits, axis=1, keepdims=True))
    r = w[:, None] * dp
    return np.concatenate([(x.T @ r).ravel(), r.sum(axis=0)]) + l2 * v

  theta = np.zeros(d * c + c)
  for _ in range(5):  # Newton-CG restarts until the gradient is small enough
    result = optimize.minimize(value_and_grad, theta, jac=True, hessp=hessp, method="Newton-CG",
                               options=dict(xtol=1e-16, maxiter=200))
    theta = result.x
    if np.linalg.norm(value_and_grad(theta)[1]) <= gtol:
      break
  return unpack(theta)


def global_optimum(model_name: str, params_template, x_train: np.ndarray, y_train: np.ndarray,
                   shards: list[np.ndarray], num_classes: int, l2: float) -> Optional[dict]:
  """x* as a params pytree shaped like `params_template` (one node's flax params), or None when
  the model's objective has no unique minimizer dfl computes."""
  w = sample_weights(shards, len(y_train))
  if model_name == "linear":
    (name,) = params_template
    kernel = least_squares_optimum(x_train, y_train, w, l2)
    return {name: {"kernel": kernel.reshape(params_template[name]["kernel"].shape)}}
  if model_name == "logreg" and l2 > 0:
    (name,) = params_template
    kernel, bias = logreg_optimum(x_train, y_train, w, num_classes, l2)
    return {name: {"kernel": kernel, "bias": bias}}
  return None
