"""D-PSGD (Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms?", 2017).

Per round t, every node takes one stochastic gradient step, then gossips:

    x_i^{t+1} = sum_j w_ij (x_j^t - eta * grad F_j(x_j^t; xi_j))

This is the adapt-then-combine form used by the DFedSAM comparison: Lian et al.'s Algorithm 1
combines concurrently, x_i^{t+1} = sum_j w_ij x_j^t - eta * grad F_i(x_i^t; xi_i); the two differ
by O(eta) per round, and the form used here makes the complete-graph reduction exact (with
W = 11^T/N it is centralized minibatch SGD on the union of the nodes' batches).
Momentum, if any, is kept across rounds (one step per round would otherwise make it void).
"""
from __future__ import annotations

from typing import Callable

from dfl.algorithms.base import Algorithm
from dfl.algorithms.local_then_gossip import local_then_gossip
from dfl.local import make_local_sgd, make_optimizer


def dpsgd(loss_fn: Callable, *, lr: float, batch_size: int, momentum: float = 0.0,
          weight_decay: float = 0.0, lr_decay: float = 1.0, mixer=None) -> Algorithm:
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay)
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=1, batch_size=batch_size)
  return local_then_gossip(local_sgd, optimizer, reset_optimizer=False, lr_decay=lr_decay,
                           mixer=mixer)
