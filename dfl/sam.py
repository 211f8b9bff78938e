"""Sharpness-aware minimisation gradient (Foret et al., "Sharpness-Aware Minimization for
Efficiently Improving Generalization", ICLR 2021), as DFedSAM and FedSAM use it locally.

On one minibatch xi (with its 0/1 padding mask, `dfl.local`):  g = grad F(y; xi);
delta = rho * g / (||g|| + eps) (||.|| the global L2 norm over all parameters);
g_sam = grad F(y + delta; xi), the same minibatch and mask. Both gradients are of the masked
mean loss, so a short last batch perturbs and steps along the mean over its valid samples.
rho = 0 returns the plain gradient with one pass, so SAM with rho = 0 is SGD bit for bit; a
traced rho (batched over runs) takes both passes, and rho = 0 then perturbs by exactly 0.
Gradient clipping (`make_optimizer(clip_norm=...)`) acts on g_sam, the gradient the optimizer
receives; the perturbation uses the unclipped g.
Models with BatchNorm statistics or dropout: `stateful_sam_gradient` (the statistics are
updated by the unperturbed pass only, as davda54/sam does).
"""
from __future__ import annotations

from typing import Callable

import jax
import optax

from dfl import model_state as model_state_lib
from dfl.model_state import StatefulLoss
from dfl.tracing import is_traced

NORM_EPS = 1e-12


def sam_gradient(loss_fn: Callable, rho: float, eps: float = NORM_EPS) -> Callable:
  """Returns gradient(params, x, y, mask) -> (loss at params, SAM gradient) for
  `dfl.local.make_local_sgd`; `loss_fn(params, x, y, mask)` is the masked mean loss."""
  value_and_grad = jax.value_and_grad(loss_fn)
  if not is_traced(rho) and rho == 0:
    return value_and_grad

  def gradient(params, x, y, mask=None):
    loss, g = value_and_grad(params, x, y, mask)
    scale = rho / (optax.global_norm(g) + eps)
    perturbed = jax.tree.map(lambda p, gi: p + scale * gi, params, g)
    _, g_sam = value_and_grad(perturbed, x, y, mask)
    return loss, g_sam

  return gradient


def stateful_sam_gradient(loss_fn: StatefulLoss, rho: float, eps: float = NORM_EPS) -> Callable:
  """SAM for a model with state or dropout (`dfl.model_state`): gradient(params, x, y, mask,
  model_state, key) -> (loss at params, SAM gradient, new model state).

  Both passes run in train mode on the same minibatch, mask and dropout key (the perturbed
  pass perturbs the weights of the same stochastic function); only the first, unperturbed pass
  updates the statistics: the perturbed pass starts from the same model state and its update is
  discarded, as davda54/sam (example/utility/bypass_bn.py: `enable_running_stats` before the
  first step, `disable_running_stats`, BatchNorm momentum 0, before the second) keeps the
  second forward pass from counting the batch twice in the running averages. Deviation: torch
  draws a new dropout mask for the second pass. rho = 0: one pass, plain SGD bit for bit.
  """
  value_and_grad = model_state_lib.value_and_grad(loss_fn)
  if not rho:
    return value_and_grad

  def gradient(params, x, y, mask, model_state, key):
    loss, g, new_model_state = value_and_grad(params, x, y, mask, model_state, key)
    scale = rho / (optax.global_norm(g) + eps)
    perturbed = jax.tree.map(lambda p, gi: p + scale * gi, params, g)
    _, g_sam, _ = value_and_grad(perturbed, x, y, mask, model_state, key)
    return loss, g_sam, new_model_state

  return gradient


def make_sam_gradient(loss_fn: Callable, rho: float) -> Callable:
  """`sam_gradient`, or `stateful_sam_gradient` for a stateful loss."""
  if model_state_lib.is_stateful(loss_fn):
    return stateful_sam_gradient(loss_fn, rho)
  return sam_gradient(loss_fn, rho)
