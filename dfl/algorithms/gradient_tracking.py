"""Gradient tracking with local steps: K-GT (Liu, Lin, Koloskova and Stich, "Decentralized
Gradient Tracking with Local Steps", Optimization Methods and Software 2024, arXiv 2301.01313,
Algorithm 1), which with K = 1 is DSGT / GT-DSGD (Pu and Nedić, "Distributed stochastic
gradient tracking methods", Math. Programming 2021; NEXT, Di Lorenzo and Scutari 2016).

Per round t, node i runs K local SGD steps on its gradient plus a correction c_i, then gossips
both its model and its update:

    z_i^{t,0} = x_i^t
    z_i^{t,k+1} = z_i^{t,k} - eta_t (g_i(z_i^{t,k}; xi_i^{t,k}) + c_i^t)      k = 0..K-1
    Delta_i^t = x_i^t - z_i^{t,K}
    x_i^{t+1} = sum_j w_ij (x_j^t - Delta_j^t)                   (= sum_j w_ij z_j^{t,K})
    c_i^{t+1} = c_i^t + (sum_j w_ij Delta_j^t - Delta_i^t) / (K eta_t)

with c_i^0 = 0 (the mean of c stays 0 under a doubly stochastic W, so (1/N) sum_i (g_i + c_i)
tracks the mean gradient). With K = 1, y_i = g_i(x_i^t) + c_i^t is the tracking variable and
the round is exactly DSGT in its adapt-then-combine form:

    x^{t+1} = W (x^t - eta y^t),     y^{t+1} = W y^t + g(x^{t+1}) - g(x^t)

(substitute c^{t+1} = W y^t - g(x^t)). On deterministic gradients (algorithm.batch_size = 0) it
converges to the exact minimizer of (1/N) sum_i f_i on heterogeneous data, where D-PSGD stops at a
heterogeneity-dependent distance. Symbols: eta = algorithm.lr (times lr_decay^t), K =
algorithm.local_steps (default 1), weight_decay is added to g. The K-GT paper's server step
eta_s is 1 here (x_j^t - eta_s Delta_j^t); local_epochs and momentum are not supported.
Communication: every neighbour receives two vectors per round (x_j - Delta_j and Delta_j), so a
round counts 2 transfers per edge.
Checked against numpy re-implementations of the equations above and of DSGT
(tests/algorithms/test_toolbox.py); K-GT's own code was not available here. The quasi-global-
momentum repository's baseline (code/pcode/optim/decentralized_sgd_with_gradient_tracking.py of
github.com/epfml/quasi-global-momentum) is the combine-then-adapt form: it updates
y <- y + g^t - g^{t-1}, gossips x and y together (two vectors, counted twice as here), then
x^{t+1} = W x^t - eta y^t and keeps W y^t; here the adapt-then-combine form of K-GT, W (x - eta y),
which differs by O(eta) per round and has the same fixed point.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from dfl.algorithms import common, registry
from dfl.algorithms.base import (Algorithm, RoundInputs, RoundMetrics, node_keys, refuse_mixer,
                                 refuse_unsupported)
from dfl.execution import node_map
from dfl.local import AugmentFn, make_local_sgd, make_optimizer
from dfl.mixing import messages_per_step, mix

PyTree = object


class GradientTrackingState(NamedTuple):
  params: PyTree  # [N, ...] x_i
  correction: PyTree  # [N, ...] c_i (the tracking variable minus the local gradient)


def gradient_tracking(loss_fn: Callable, *, lr: float, batch_size: int, local_steps: int = 1,
                      weight_decay: float = 0.0, lr_decay: float = 1.0,
                      augment: Optional[AugmentFn] = None) -> Algorithm:
  """Builds K-GT (DSGT for local_steps = 1); equations in the module docstring.

  Args:
    loss_fn: loss(params, x_B, y_B, mask_B), one node's masked-mean minibatch loss.
    lr: eta, the local step size.
    batch_size: B; 0: full batches (exact local gradients).
    local_steps: K.
    weight_decay: coupled L2 added to every gradient (wd * z).
    lr_decay: eta_t = lr * lr_decay**t.
    augment: optional augment(key, x_B) -> x_B on every minibatch.
  """
  optimizer = make_optimizer(lr=lr, weight_decay=weight_decay)
  value_and_grad = jax.value_and_grad(loss_fn)

  def local_phase(x, c, key, data, lr_scale):
    def corrected(p, x_B, y_B, mask_B):  # g_i(z) + c_i (weight decay is added by the optimizer)
      loss, grads = value_and_grad(p, x_B, y_B, mask_B)
      return loss, jax.tree.map(jnp.add, grads, c)
    local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=local_steps,
                               batch_size=batch_size, gradient=corrected, augment=augment)
    z, _, loss = local_sgd(x, optimizer.init(x), key, data, lr_scale)
    return jax.tree.map(jnp.subtract, x, z), loss

  def init(params_N):
    return GradientTrackingState(params_N, jax.tree.map(jnp.zeros_like, params_N))

  def round_fn(state: GradientTrackingState, inputs: RoundInputs):
    n = jax.tree.leaves(state.params)[0].shape[0]
    lr_scale = jnp.asarray(lr_decay, jnp.float32) ** inputs.round
    in_data = type(inputs.data)(None, None, 0, 0)
    delta, loss_N = node_map(local_phase, in_axes=(0, 0, 0, in_data, None))(
        state.params, state.correction, node_keys(inputs.key, n), inputs.data, lr_scale)
    params = mix(inputs.mixing, jax.tree.map(jnp.subtract, state.params, delta))
    mixed_delta = mix(inputs.mixing, delta)
    scale = 1.0 / (local_steps * lr * lr_scale)
    correction = jax.tree.map(lambda c, wd, d: c + (wd - d) * scale.astype(c.dtype),
                              state.correction, mixed_delta, delta)
    sent_N, received_N = messages_per_step(inputs.mixing)
    metrics = RoundMetrics(loss=loss_N.mean(), transfers=2 * sent_N.sum(), sent_N=2 * sent_N,
                           received_N=2 * received_N)
    return GradientTrackingState(params, correction), metrics

  return Algorithm(init, round_fn)


@registry.register(
    "gradient_tracking", uses_topology=True, no_variance_correction=True,
    check=lambda a, num_nodes: refuse_unsupported(a, one_step=False),
    hyperparameters=(common.LR, common.LR_DECAY, common.LOCAL_STEPS.with_default(1),
                     common.BATCH_SIZE, common.WEIGHT_DECAY))
def build(a, ctx) -> Algorithm:
  """The registry's builder: reads the `algorithm` config section (K = local_steps, default 1)."""
  refuse_mixer(a.name, ctx)
  return gradient_tracking(ctx.loss_fn, lr=a.lr, batch_size=a.batch_size,
                           local_steps=int(registry.resolved(a, "local_steps")),
                           weight_decay=a.weight_decay, lr_decay=a.lr_decay, augment=ctx.augment)
