"""Exact diffusion / D^2: Yuan, Ying, Zhao and Sayed, "Exact Diffusion for Distributed
Optimization and Learning -- Part I: Algorithm Development", IEEE TSP 2019 (eqs. (91)-(93));
its stochastic form D^2, Tang, Lian, Yan, Zhang and Liu, "D^2: Decentralized Training over
Decentralized Data", ICML 2018 (Algorithm 1).

Per round t, every node takes one gradient step (adapt), corrects it with its previous step
(correct) and gossips with W̄ = (I + W) / 2 (combine):

    psi_i^{t+1} = x_i^t - eta_t g_i(x_i^t; xi_i^t)
    phi_i^{t+1} = psi_i^{t+1} + x_i^t - psi_i^t
    x_i^{t+1}   = sum_j w̄_ij phi_j^{t+1},          W̄ = (I + W) / 2

with psi^0 = x^0 (so round 0 is one D-PSGD step with W̄). Eliminating psi gives D^2's
x^{t+1} = W̄ (2 x^t - x^{t-1} - eta (g^t - g^{t-1})). On deterministic gradients
(batch_size = 0) the fixed point is the exact minimizer of (1/N) sum_i f_i for any
heterogeneity. Symbols: eta = algorithm.lr (times lr_decay^t), weight_decay is added to g.
One exchange per round (phi), counted as one transfer per edge.

Reference code: code/pcode/optim/decentralized_d2.py of github.com/epfml/quasi-global-momentum
(its D^2 baseline): the same recursion, but gossiping with W itself (Tang et al. require
lambda_min(W) > -1/3); here W̄ = (I + W)/2 as in Yuan et al., whose eigenvalues lie in (0, 1]
for any symmetric doubly stochastic W, so the method is stable on every graph. In a schedule's
dense rounds (topology.schedule) the mixing is the dense W as given (a complete-graph merge is
then an exact average). Deviations: one local step per round (local_steps must be 1);
momentum, clipping and local_epochs are not supported.

Precision: the exactness rests on 1^T (I - W̄) = 0, which float32 arithmetic keeps only up to
the rounding of W (1/3 is not representable: the ring's Metropolis-Hastings columns sum to
1 + 3e-8) and of each mixed iterate; the error enters the implicit dual (the running sum of
x^t - psi^t) every round and is never corrected. Measured on 16-node least squares with full
batches, 1500 rounds (experiments/heterogeneity_sweep.py): ||x̄ - x*||^2 stops near 4e-6 with
those weights and near 4e-9 with exactly representable ones (topology.laziness=0.25: 1/4, 1/2,
1/4); in float64 it reaches 1e-10 (tests/algorithms/test_toolbox.py). Gradient tracking applies
its corrections to its updates, which vanish at the fixed point, and reaches ~1e-11 in float32.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from dfl.algorithms import common, registry
from dfl.algorithms.base import (Algorithm, RoundInputs, RoundMetrics, merge_flag,
                                 node_gradients, refuse_mixer, refuse_unsupported)
from dfl.local import AugmentFn
from dfl.mixing import messages_per_step, mix

PyTree = object


class ExactDiffusionState(NamedTuple):
  params: PyTree  # [N, ...] x_i
  psi: PyTree  # [N, ...] psi_i, the previous round's adapted model


def exact_diffusion(loss_fn: Callable, *, lr: float, batch_size: int, weight_decay: float = 0.0,
                    lr_decay: float = 1.0, merge_rounds: Sequence[int] = (),
                    augment: Optional[AugmentFn] = None) -> Algorithm:
  """Builds exact diffusion (D^2 with W̄ = (I + W)/2); equations in the module docstring.

  Args:
    loss_fn: loss(params, x_B, y_B, mask_B).
    lr: eta.
    batch_size: B; 0: full batches.
    weight_decay: coupled L2 added to every gradient.
    lr_decay: eta_t = lr * lr_decay**t.
    merge_rounds: rounds mixed with the topology's W as given (a schedule's dense rounds).
    augment: optional augment(key, x_B) -> x_B.
  """
  gradients = node_gradients(loss_fn, batch_size=batch_size, weight_decay=weight_decay,
                             augment=augment)

  def init(params_N):
    return ExactDiffusionState(params_N, params_N)

  def round_fn(state: ExactDiffusionState, inputs: RoundInputs):
    eta = lr * jnp.asarray(lr_decay, jnp.float32) ** inputs.round
    loss_N, g = gradients(state.params, inputs)
    psi = jax.tree.map(lambda x, gi: x - eta.astype(x.dtype) * gi, state.params, g)
    phi = jax.tree.map(lambda p, x, p_old: p + x - p_old, psi, state.params, state.psi)
    w_phi = mix(inputs.mixing, phi)
    merging = merge_flag(inputs.round, merge_rounds)
    params = jax.tree.map(lambda a, b: jnp.where(merging, b, 0.5 * (a + b)), phi, w_phi)
    sent_N, received_N = messages_per_step(inputs.mixing)
    metrics = RoundMetrics(loss=loss_N.mean(), transfers=sent_N.sum(), sent_N=sent_N,
                           received_N=received_N)
    return ExactDiffusionState(params, psi), metrics

  return Algorithm(init, round_fn)


@registry.register(
    "exact_diffusion", uses_topology=True, no_variance_correction=True,
    one_gradient_per_round=True, check=lambda a, num_nodes: refuse_unsupported(a, one_step=True),
    hyperparameters=(common.LR, common.LR_DECAY, common.BATCH_SIZE, common.WEIGHT_DECAY))
def build(a, ctx) -> Algorithm:
  """The registry's builder: reads the `algorithm` config section."""
  refuse_mixer(a.name, ctx)
  return exact_diffusion(ctx.loss_fn, lr=a.lr, batch_size=a.batch_size,
                         weight_decay=a.weight_decay, lr_decay=a.lr_decay,
                         merge_rounds=ctx.merge_rounds, augment=ctx.augment)
