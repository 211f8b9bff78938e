"""FedAvg / FedSAM: full participation with one local step is centralized minibatch SGD; rho = 0
makes FedSAM FedAvg bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np

from dfl.algorithms.base import RoundInputs, node_keys
from dfl.algorithms.fedavg import fedavg
from dfl.algorithms.fedsam import fedsam
from dfl.local import shuffled_positions
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


def test_full_participation_one_local_step_is_centralized_minibatch_sgd():
  loss_fn, params_N, data = tiny_problem(sizes=(12, 9, 12, 7))
  r = 3
  state, key = rounds(fedavg(loss_fn, num_nodes=N, lr=LR, local_steps=1, batch_size=BATCH,
                             client_fraction=1.0, lr_decay=DECAY), params_N, data, r)
  # Centralized SGD on the union of the minibatches the nodes drew (equal batch sizes, so the
  # mean of the node gradients is the gradient of the mean loss over the union).
  w = jax.tree.map(lambda p: p[0], params_N)
  width = data.indices.shape[1]
  for t in range(r):
    keys = node_keys(jax.random.fold_in(key, t), N)
    rows = np.concatenate([
        np.asarray(data.indices[i])[np.asarray(shuffled_positions(keys[i], data.sizes[i], width))[:BATCH]]
        for i in range(N)])
    g = jax.grad(loss_fn)(w, data.x[rows], data.y[rows])
    w = jax.tree.map(lambda p, gi: p - LR * DECAY**t * gi, w, g)
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(w)):
    for i in range(N):  # every node holds the global model
      np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), rtol=1e-5, atol=1e-6)


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
