"""Push-sum / SGP (dfl/algorithms/push_sum.py): exact averaging on directed and time-varying
graphs without training, D-PSGD on a doubly stochastic graph, one training round against numpy."""
import jax
import jax.numpy as jnp
import numpy as np

import topologies
from dfl.algorithms.base import RoundInputs
from dfl.algorithms.dpsgd import dpsgd
from dfl.algorithms.push_sum import push_sum
from dfl.engine import make_chunk_runner
from dfl.mixing import DenseMixing
from tests.algorithms._tiny import ring_W, tiny_problem

KEY = jax.random.key(5)
# A directed graph of 4 nodes, 0 -> 1 -> 2 -> 3 -> 0 plus 0 -> 2: node 0 has out-degree 2.
A = np.zeros((4, 4), bool)
for sender, receiver in ((0, 1), (1, 2), (2, 3), (3, 0), (0, 2)):
  A[receiver, sender] = True  # A[i, j]: i receives from j


def run(algorithm, params_N, data, W_R, rounds):
  """W_R: one [N, N] matrix, or one per round (time-varying)."""
  per_round = np.ndim(W_R) == 3
  state = algorithm.init(jax.tree.map(jnp.array, params_N))
  state, _ = make_chunk_runner(algorithm)(state, data, KEY, jnp.arange(rounds, dtype=jnp.int32),
                                          DenseMixing(jnp.asarray(W_R, jnp.float32)), per_round)
  return state


def different_inits(params_N, seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params_N)


def assert_average(state, params0, atol):
  for got, x0 in zip(jax.tree.leaves(state.params), jax.tree.leaves(params0)):
    np.testing.assert_allclose(got, np.broadcast_to(np.mean(x0, 0), got.shape), atol=atol)


def test_directed_graph_without_training_reaches_the_true_average():
  P = topologies.weights.column_uniform(A)
  assert np.allclose(P.sum(0), 1) and not np.allclose(P.sum(1), 1)  # column- not row-stochastic
  loss_fn, params_N, data = tiny_problem()
  params_N = different_inits(params_N)
  state = run(push_sum(loss_fn, lr=0.0, batch_size=4), params_N, data, P, 200)
  assert_average(state, params_N, atol=1e-4)
  assert not np.allclose(state.weight, 1.0, atol=0.05)  # the weights did the de-biasing
  # Plain gossip with the row form of the same graph settles elsewhere: the test can fail.
  W = topologies.weights.in_average(A)
  x0 = np.asarray(jax.tree.leaves(params_N)[0]).reshape(4, -1)
  gossip = np.linalg.matrix_power(W, 200) @ x0
  assert np.abs(gossip - x0.mean(0)).max() > 1e-2


def test_time_varying_directed_graph_reaches_the_true_average():
  topology = topologies.make("random_neighbors", 4, degree=1, directed=True,
                             weights="column_uniform", seed=3)
  assert topology.time_varying and topology.column_stochastic
  P_R = np.stack([topology.matrix(t) for t in range(150)])
  assert not np.allclose(P_R.sum(2), 1)  # some rows do not sum to 1
  loss_fn, params_N, data = tiny_problem()
  params_N = different_inits(params_N)
  state = run(push_sum(loss_fn, lr=0.0, batch_size=4), params_N, data, P_R, 150)
  assert_average(state, params_N, atol=1e-4)


def test_doubly_stochastic_graph_is_dpsgd():
  loss_fn, params_N, data = tiny_problem(sizes=(12, 7, 5, 12))
  params_N = different_inits(params_N)
  kw = dict(lr=0.1, batch_size=4, local_steps=2, momentum=0.9)
  got = run(push_sum(loss_fn, **kw), params_N, data, ring_W(), 4)
  want = run(dpsgd(loss_fn, **kw), params_N, data, ring_W(), 4)
  np.testing.assert_allclose(got.weight, 1.0, atol=1e-6)
  for g, w in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_one_round_steps_the_numerator_with_the_gradient_at_the_debiased_model():
  """SGP's Algorithm 1 in numpy: z' = P (z - lr grad F(z / w)), w' = P w, x' = z' / w'. One
  local step with the batch holding a node's whole shard: the gradient of its mean loss."""
  loss_fn, params_N, data = tiny_problem()  # 4 shards of 12 samples
  params_N = different_inits(params_N)
  P, lr = topologies.weights.column_uniform(A), 0.3
  w_N = np.array([0.5, 1.5, 0.8, 1.2], np.float32)
  algorithm = push_sum(loss_fn, lr=lr, batch_size=12)
  state = algorithm.init(params_N)._replace(weight=jnp.asarray(w_N))
  inputs = RoundInputs(jnp.int32(0), KEY, DenseMixing(jnp.asarray(P, jnp.float32)), data, KEY)
  new, metrics = jax.jit(algorithm.round)(state, inputs)

  grads = []
  for i in range(4):
    rows = np.asarray(data.indices[i, :12])
    x_i = jax.tree.map(lambda p: p[i], params_N)
    grads.append(jax.grad(loss_fn)(x_i, data.x[rows], data.y[rows], jnp.ones(12)))
  w_next = P @ w_N.astype(np.float64)
  np.testing.assert_allclose(new.weight, w_next, rtol=1e-6)
  for leaf, (x, got) in enumerate(zip(jax.tree.leaves(params_N), jax.tree.leaves(new.params))):
    g = np.stack([np.asarray(jax.tree.leaves(gr)[leaf]) for gr in grads]).reshape(4, -1)
    z = w_N[:, None] * np.asarray(x, np.float64).reshape(4, -1)
    z_next = P @ (z - lr * g)
    np.testing.assert_allclose(np.asarray(got).reshape(4, -1), z_next / w_next[:, None],
                               rtol=1e-4, atol=1e-5)
  # 5 edges; each message is one model (75 float32 of the MLP 5-8-3) and the float32 weight.
  assert int(metrics.transfers) == 5 and int(metrics.message_bytes) == 75 * 4 + 4
