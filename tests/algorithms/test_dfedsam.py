"""DFedSAM-MGS: Q gossip steps equal one gossip with W^Q, consensus shrinks with Q. (DFedSAM,
DFedSAM-MGS with Q = 1 and rho = 0 against an independent loop: test_against_reference.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.algorithms.dfedsam import dfedsam
from dfl.algorithms.dfedsam_mgs import dfedsam_mgs
from dfl.engine import make_chunk_runner
from dfl.mixing import DenseMixing, consensus_distance, mix_steps
from tests.algorithms._tiny import ring_W, tiny_problem

HP = dict(lr=0.1, local_steps=3, batch_size=4, momentum=0.5, weight_decay=1e-3, lr_decay=0.9)


def run(algorithm, params_N, data, W, rounds=3):
  state = algorithm.init(jax.tree.map(jnp.array, params_N))
  state, metrics = make_chunk_runner(algorithm)(
      state, data, jax.random.key(7), jnp.arange(rounds, dtype=jnp.int32),
      DenseMixing(jnp.asarray(W, jnp.float32)), False)
  return state, metrics


@pytest.mark.parametrize("q", [2, 4])
def test_mgs_q_steps_equal_one_gossip_with_W_to_the_q(q):
  loss_fn, params_N, data = tiny_problem()
  W = ring_W()
  mgs, metrics = run(dfedsam_mgs(loss_fn, rho=0.1, gossip_steps=q, **HP), params_N, data, W,
                     rounds=1)
  once, once_metrics = run(dfedsam(loss_fn, rho=0.1, **HP), params_N, data,
                           np.linalg.matrix_power(W, q), rounds=1)
  for a, b in zip(jax.tree.leaves(mgs.params), jax.tree.leaves(once.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # Q real exchanges on the ring: every node sends 2 models per gossip step.
  assert int(metrics.transfers[0]) == q * 2 * W.shape[0]
  np.testing.assert_array_equal(np.asarray(metrics.sent_N[0]), np.full(W.shape[0], 2 * q))


def test_consensus_distance_after_mixing_non_increasing_in_q():
  loss_fn, params_N, data = tiny_problem()
  rng = np.random.default_rng(0)
  # Independent inits so that the models disagree from the start.
  params_N = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape).astype(np.float32),
                          params_N)
  # The local phase alone (W = I); MGS then applies W^Q to it (the test above).
  local, _ = run(dfedsam(loss_fn, rho=0.1, **HP), params_N, data, np.eye(4), rounds=1)
  mixing = DenseMixing(jnp.asarray(ring_W(), jnp.float32))
  distances = [float(consensus_distance(mix_steps(mixing, local.params, q))) for q in range(8)]
  assert all(b <= a * (1 + 1e-6) for a, b in zip(distances, distances[1:])), distances
  assert distances[-1] < 0.05 * distances[0], distances  # strictly shrinking on a connected ring


def test_mgs_rejects_zero_gossip_steps():
  loss_fn, _, _ = tiny_problem()
  with pytest.raises(ValueError, match="gossip_steps"):
    dfedsam_mgs(loss_fn, rho=0.1, gossip_steps=0, **HP)
