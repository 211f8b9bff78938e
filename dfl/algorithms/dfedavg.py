"""DFedAvg and DFedAvgM (Sun, Li, Wang, "Decentralized Federated Averaging", TPAMI 2022).

Per node i and round t, with K local steps of SGD (learning rate eta, heavy-ball momentum theta
for DFedAvgM, which restarts every round) on minibatches xi of node i's data:

    y^0 = x_i^t;  y^{k+1} = y^k - eta * v^{k+1},  v^{k+1} = theta * v^k + grad F_i(y^k; xi)
    x_i^{t+1} = sum_l w_il y_l^K

Symbols -> names: K = local_steps, eta = lr, theta = momentum, w = the mixing matrix W.
"""
from __future__ import annotations

from typing import Callable

from dfl.algorithms.base import Algorithm
from dfl.algorithms.local_then_gossip import local_then_gossip
from dfl.local import make_local_sgd, make_optimizer


def dfedavg(loss_fn: Callable, *, lr: float, local_steps: int, batch_size: int,
            momentum: float = 0.0, weight_decay: float = 0.0, lr_decay: float = 1.0,
            mixer=None, num_steps_N=None) -> Algorithm:
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay)
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=local_steps, batch_size=batch_size)
  return local_then_gossip(local_sgd, optimizer, reset_optimizer=True, lr_decay=lr_decay,
                           mixer=mixer, num_steps_N=num_steps_N)
