"""The SAM gradient on a least-squares quadratic, where every quantity is known in closed form.

loss(w; X, y) = 1/(2B) ||X w - y||^2  has  g(w) = H w - X^T y / B,  H = X^T X / B, so
g_sam = g(w + delta) = g + H delta  and  delta = H^{-1} (g_sam - g) can be read back exactly.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfl.local import NodeData, make_local_sgd
from dfl.sam import sam_gradient
from tests.algorithms._reference import stream_batches


def loss(params, x, y, mask=None):
  w = jnp.concatenate([params["a"], params["b"]])  # two leaves: the norm must be global
  if mask is None:
    return 0.5 * jnp.mean((x @ w - y) ** 2)
  return 0.5 * jnp.sum(mask * (x @ w - y) ** 2) / jnp.sum(mask)


def problem(seed=0, b=16, d=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, d)).astype(np.float32)
  y = rng.normal(size=b).astype(np.float32)
  w = rng.normal(size=d).astype(np.float32)
  return x, y, {"a": jnp.asarray(w[:2]), "b": jnp.asarray(w[2:])}


def closed_form(x, y, w, rho):
  x, y, w = (np.asarray(a, np.float64) for a in (x, y, w))
  h = x.T @ x / len(y)
  g = h @ w - x.T @ y / len(y)
  delta = rho * g / np.linalg.norm(g)
  return g, delta, g + h @ delta, h


def flat(tree):
  return np.concatenate([np.asarray(tree["a"]), np.asarray(tree["b"])]).astype(np.float64)


def test_sam_gradient_matches_closed_form_and_perturbation_has_norm_rho():
  x, y, params = problem()
  rho = 0.3
  value, g_sam = sam_gradient(loss, rho)(params, jnp.asarray(x), jnp.asarray(y))
  g, delta, expected, h = closed_form(x, y, flat(params), rho)
  np.testing.assert_allclose(flat(g_sam), expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(value), float(loss(params, x, y)), rtol=1e-6)  # loss at y^k
  recovered = np.linalg.solve(h, flat(g_sam) - g)  # the perturbation SAM actually applied
  np.testing.assert_allclose(np.linalg.norm(recovered), rho, rtol=1e-3)
  np.testing.assert_allclose(recovered, delta, rtol=1e-3, atol=1e-5)  # along g / ||g||


def test_rho_zero_is_the_plain_gradient():
  x, y, params = problem(1)
  _, g0 = sam_gradient(loss, 0.0)(params, x, y)
  _, g = jax.value_and_grad(loss)(params, x, y)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_local_sam_step_uses_the_same_minibatch_for_both_gradients():
  """One local step with a batch drawn inside `make_local_sgd` equals the closed-form SAM step
  on that batch; a second gradient from any other batch would not match."""
  b, batch, lr, rho = 24, 6, 0.05, 0.4
  x, y, params = problem(2, b=b)
  data = NodeData(jnp.asarray(x), jnp.asarray(y), jnp.arange(b, dtype=jnp.int32),
                  jnp.int32(b))
  optimizer = optax.sgd(lr)
  local = make_local_sgd(loss, optimizer, local_steps=1, batch_size=batch,
                         gradient=sam_gradient(loss, rho))
  key = jax.random.key(3)
  new_params, _, _ = local(params, optimizer.init(params), key, data)
  # The batch local_sgd draws: the first `batch` entries of epoch 0's order (dfl/local.py).
  rows = stream_batches(key, b, b, batch, 1)[0]
  _, _, g_sam, _ = closed_form(x[rows], y[rows], flat(params), rho)
  np.testing.assert_allclose(flat(new_params), flat(params) - lr * g_sam, rtol=1e-4, atol=1e-6)
  other = np.setdiff1d(np.arange(b), rows)[:batch]  # perturb on another batch: clearly different
  g_other, _, _, h_batch = closed_form(x[rows], y[rows], flat(params), rho)
  _, delta_other, _, _ = closed_form(x[other], y[other], flat(params), rho)
  mixed = g_other + h_batch @ delta_other
  assert np.abs(flat(params) - lr * mixed - flat(new_params)).max() > 1e-4
