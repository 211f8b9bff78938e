"""FedSAM: rho = 0 makes it FedAvg bit for bit (FedAvg's own reduction to centralized minibatch
SGD is tested in tests/core/test_engine_reductions.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from dfl.algorithms.base import RoundInputs
from dfl.algorithms.fedavg import fedavg
from dfl.algorithms.fedsam import fedsam
from dfl.mixing import DenseMixing
from tests.algorithms._tiny import N, tiny_problem

LR, DECAY, BATCH = 0.2, 0.9, 5


def rounds(algorithm, params_N, data, r):
  state = algorithm.init(params_N)
  step = jax.jit(algorithm.round)
  key = jax.random.key(11)
  for t in range(r):
    state, _ = step(state, RoundInputs(jnp.int32(t), jax.random.fold_in(key, t),
                                       DenseMixing(jnp.eye(N)), data))
  return state, key


def test_fedsam_rho_zero_is_fedavg_bit_for_bit():
  loss_fn, params_N, data = tiny_problem()
  common = dict(num_nodes=N, lr=LR, local_steps=3, batch_size=BATCH, client_fraction=0.5,
                momentum=0.9, lr_decay=DECAY)
  sam, _ = rounds(fedsam(loss_fn, rho=0.0, **common), params_N, data, 2)
  avg, _ = rounds(fedavg(loss_fn, **common), params_N, data, 2)
  for a, b in zip(jax.tree.leaves(sam.params), jax.tree.leaves(avg.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  sam1, _ = rounds(fedsam(loss_fn, rho=0.5, **common), params_N, data, 2)
  assert max(float(jnp.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(sam1.params), jax.tree.leaves(avg.params))) > 1e-4
