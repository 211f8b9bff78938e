"""The local batch stream (dfl/local.py): epochs that visit every sample exactly once, a short
masked last batch, reshuffling per epoch, consecutive steps reading consecutive batches.

Visits are counted from the rows `make_local_sgd` actually reads: with one-hot inputs, the
linear loss sum(mask * x @ w) and SGD at learning rate 2^k on step k, the final -w[r] is the
binary number whose bit k says whether step k read row r (never a padding lane).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dfl.local import NodeData, batch_stream, make_local_sgd
from dfl.models import MLP, cross_entropy_loss
from dfl.sam import sam_gradient
from tests.algorithms._reference import plain_loss, stream_batches

def counting_data(sizes, width):
  """One-hot x over sum(sizes) + 1 rows; node i's shard = its own rows, its padding slots all
  point at the last row."""
  total = sum(sizes) + 1
  rows, start = [], 0
  for n in sizes:
    rows.append(list(range(start, start + n)) + [total - 1] * (width - n))
    start += n
  return NodeData(jnp.eye(total), jnp.zeros(total, jnp.int32), jnp.asarray(rows, jnp.int32),
                  jnp.asarray(sizes, jnp.int32))


def linear_sum_loss(w, x, y, mask):
  del y
  return jnp.sum(mask * (x @ w))


def steps_reading_each_row(key, shard: NodeData, *, batch, steps, num_steps=None,
                           max_epochs=None) -> np.ndarray:
  """[rows, steps] bool: whether step k read row r (decoded from the final parameters)."""
  optimizer = optax.sgd(lambda count: 2.0 ** count)
  local = make_local_sgd(linear_sum_loss, optimizer, local_steps=steps, batch_size=batch,
                         max_epochs=max_epochs)
  w0 = jnp.zeros(shard.x.shape[0])
  w, _, _ = jax.jit(local)(w0, optimizer.init(w0), key, shard, 1.0, num_steps)
  code = np.rint(-np.asarray(w)).astype(np.int64)
  return (code[:, None] >> np.arange(steps)[None, :]) & 1 == 1


def shard_of(data, i):
  return NodeData(data.x, data.y, data.indices[i], data.sizes[i])


def test_two_epochs_of_7_samples_batch_5_visit_each_sample_exactly_twice():
  data = counting_data([7], width=10)
  read = steps_reading_each_row(jax.random.key(0), shard_of(data, 0), batch=5, steps=4)
  assert read[:7].sum(axis=1).tolist() == [2] * 7  # the wrap gave [3,2,3,3,3,3,3]
  assert read[:7, :2].sum(axis=1).tolist() == [1] * 7  # epoch 0: each sample once
  assert read[:7, 2:].sum(axis=1).tolist() == [1] * 7  # epoch 1: each sample once
  assert read[7:].sum() == 0  # padding never read
  assert read.sum(axis=0).tolist() == [5, 2, 5, 2]  # full batch, short batch, per epoch
  epoch0 = [np.flatnonzero(read[:, k]).tolist() for k in range(2)]
  epoch1 = [np.flatnonzero(read[:, k]).tolist() for k in range(2, 4)]
  assert epoch0 != epoch1  # reshuffled


def test_20_samples_batch_128_is_one_batch_with_each_sample_once():
  data = counting_data([20], width=20)
  read = steps_reading_each_row(jax.random.key(1), shard_of(data, 0), batch=128, steps=1)
  assert read[:20, 0].all() and read[20:].sum() == 0
  stream = batch_stream(jax.random.key(1), jnp.int32(20), 20, batch_size=128, num_steps=1)
  assert int(stream.mask.sum()) == 20 and stream.mask.shape == (1, 128)
  assert sorted(np.asarray(stream.slots[0])[np.asarray(stream.mask[0])].tolist()) == list(range(20))


@pytest.mark.parametrize("n, width, batch, steps", [(7, 10, 5, 5), (3, 8, 2, 7), (5, 845, 32, 5),
                                                    (300, 845, 32, 5)])
def test_steps_read_the_stream_batches_in_order(n, width, batch, steps):
  """Step k reads exactly the k-th batch of the documented stream (epoch e = the order of
  uniform(fold_in(key, e)), cut into ceil(n / B) batches), across epoch boundaries."""
  key = jax.random.key(n + steps)
  data = counting_data([n], width=width)
  read = steps_reading_each_row(key, shard_of(data, 0), batch=batch, steps=steps)
  want = stream_batches(key, n, width, batch, steps)
  for k in range(steps):
    assert np.flatnonzero(read[:, k]).tolist() == sorted(want[k].tolist()), k
  stream = batch_stream(key, jnp.int32(n), width, batch_size=batch, num_steps=steps)
  for k in range(steps):
    valid = np.asarray(stream.slots[k])[np.asarray(stream.mask[k])]
    np.testing.assert_array_equal(valid, want[k])  # in the stream's order, not only as a set


def test_epochs_mode_over_unequal_shards_vmapped():
  """E = 2 epochs, per-node step counts 2 * ceil(n_i / B), one vmapped scan of the longest:
  every node visits each of its samples exactly twice, once per epoch; extra steps read nothing."""
  sizes, batch, epochs = [9, 4, 1, 6], 4, 2
  steps_N = np.array([epochs * -(-n // batch) for n in sizes], np.int32)
  data = counting_data(sizes, width=9)
  key = jax.random.key(3)
  optimizer = optax.sgd(lambda count: 2.0 ** count)
  k_max = int(steps_N.max())
  local = make_local_sgd(linear_sum_loss, optimizer, local_steps=k_max, batch_size=batch,
                         max_epochs=epochs)
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(len(sizes)))
  w0 = jnp.zeros((len(sizes), data.x.shape[0]))
  w, _, _ = jax.jit(jax.vmap(local, in_axes=(0, 0, 0, NodeData(None, None, 0, 0), None, 0)))(
      w0, jax.vmap(optimizer.init)(w0), keys, data, 1.0, jnp.asarray(steps_N))
  start = 0
  for i, n in enumerate(sizes):
    code = np.rint(-np.asarray(w[i])).astype(np.int64)
    read = (code[:, None] >> np.arange(k_max)[None, :]) & 1 == 1
    own = slice(start, start + n)
    assert read[own].sum(axis=1).tolist() == [epochs] * n, i
    assert read.sum() == epochs * n  # nothing outside the node's own rows
    assert read[:, steps_N[i]:].sum() == 0  # the masked extra steps are no-ops
    want = stream_batches(keys[i], n, 9, batch, int(steps_N[i]))
    for k in range(int(steps_N[i])):
      assert np.flatnonzero(read[:, k]).tolist() == sorted((want[k] + start).tolist())
    start += n


def test_masked_short_batch_gradient_is_the_mean_over_its_valid_samples():
  rng = np.random.default_rng(0)
  model = MLP((8,), 3)
  x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=5), jnp.int32)
  params = model.init(jax.random.key(0), x)["params"]
  mask = jnp.asarray([1, 1, 0, 1, 0], jnp.float32)
  valid = np.flatnonzero(np.asarray(mask))
  loss, grads = jax.value_and_grad(cross_entropy_loss(model))(params, x, y, mask)
  want_loss, want = jax.value_and_grad(plain_loss(model))(params, x[valid], y[valid])
  np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  # SAM on the masked batch: both gradients on the valid samples only, written out.
  rho = 0.5
  _, g_sam = sam_gradient(cross_entropy_loss(model), rho)(params, x, y, mask)
  norm = np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(want)))
  perturbed = jax.tree.map(lambda p, g: p + rho / norm * g, params, want)
  want_sam = jax.grad(plain_loss(model))(perturbed, x[valid], y[valid])
  for a, b in zip(jax.tree.leaves(g_sam), jax.tree.leaves(want_sam)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_one_sample_shard_reads_a_new_epoch_every_step_and_too_many_epochs_fail():
  stream = batch_stream(jax.random.key(0), jnp.int32(1), 6, batch_size=4, num_steps=9)
  assert np.asarray(stream.epoch).tolist() == list(range(9))
  assert np.asarray(stream.mask).sum(axis=1).tolist() == [1] * 9
  assert np.asarray(stream.slots)[:, 0].tolist() == [0] * 9
  with pytest.raises(ValueError, match="local_steps=300"):
    batch_stream(jax.random.key(0), jnp.int32(1), 6, batch_size=4, num_steps=300)
