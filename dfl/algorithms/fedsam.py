"""FedSAM (Qu et al., "Generalized Federated Learning via Sharpness Aware Minimization", ICML
2022; Caldarola et al., ECCV 2022): FedAvg whose sampled clients take SAM steps locally, the
centralized-server reference of the DFedSAM comparison.

Round t: the server samples m = max(1, round(C * N)) clients; each sampled client k runs, from
y^0 = x^t, K steps  y^{k+1} = y^k - eta_t * grad F_k(y^k + rho * g / ||g||; xi),
g = grad F_k(y^k; xi) (one minibatch xi for both gradients); then x^{t+1} = (1/m) sum_k y_k^K.

Symbols -> names: C = client_fraction, K = local_steps, eta = lr, rho = rho. This is
`dfl.algorithms.fedavg.fedavg` with the gradient hook set to `dfl.sam.sam_gradient`; rho = 0 is
FedAvg.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax

from dfl.algorithms import common, registry
from dfl.algorithms.base import Algorithm
from dfl.algorithms.fedavg import fedavg
from dfl.sam import make_sam_gradient


def fedsam(loss_fn: Callable, *, num_nodes: int, lr: float, rho: float, local_steps: int,
           batch_size: int, client_fraction: float = 0.1, momentum: float = 0.0,
           weight_decay: float = 0.0, lr_decay: float = 1.0,
           num_steps_N: Optional[jax.Array] = None, clip_norm: Optional[float] = None,
           augment: Optional[Callable] = None, max_epochs: Optional[int] = None,
           model_state_N=None, average_stats: bool = True) -> Algorithm:
  """Builds FedSAM; arguments as in `fedavg`, plus rho, the SAM radius."""
  return fedavg(loss_fn, num_nodes=num_nodes, lr=lr, local_steps=local_steps,
                batch_size=batch_size, client_fraction=client_fraction, momentum=momentum,
                weight_decay=weight_decay, lr_decay=lr_decay,
                gradient=make_sam_gradient(loss_fn, rho), num_steps_N=num_steps_N,
                clip_norm=clip_norm, augment=augment, max_epochs=max_epochs,
                model_state_N=model_state_N, average_stats=average_stats)


@registry.register("fedsam",
                   supports_model_state=True, hyperparameters=(
    *common.LOCAL_UPDATE, common.RHO, common.CLIENT_FRACTION, common.MOMENTUM))
def build(a, ctx) -> Algorithm:
  return fedsam(ctx.loss_fn, num_nodes=ctx.num_nodes, rho=a.rho,
                client_fraction=a.client_fraction, momentum=registry.resolved(a, "momentum"),
                **common.local_options(a, ctx))
