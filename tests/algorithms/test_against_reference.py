"""DFedAvg(M), DFedSAM, DFedSAM-MGS and D-PSGD rounds against an independent loop
(tests/algorithms/_reference.py): every optimizer option, SAM, gossip steps, local epochs over
unequal shards (short batches, epochs crossed within a round), kept momentum, augmentation.

Each option case also checks that the reference with the option differs from the reference
without it, so a build that ignored the option (e.g. lr_decay without effect) would fail.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.algorithms.dfedavg import dfedavg
from dfl.algorithms.dfedsam import dfedsam
from dfl.algorithms.dfedsam_mgs import dfedsam_mgs
from dfl.algorithms.dpsgd import dpsgd
from dfl.engine import make_chunk_runner
from dfl.local import NodeData, make_local_sgd, make_optimizer
from dfl.mixing import DenseMixing
from dfl.models import MLP
from tests.algorithms._reference import reference_run
from tests.algorithms._tiny import ring_W, tiny_problem

SIZES = (12, 7, 5, 12)  # with B = 4: batches of 4,4,4 | 4,3 | 4,1 | 4,4,4
B, K, ROUNDS, KEY = 4, 3, 3, jax.random.key(7)
MODEL = MLP((8,), 3)


def run_code(algorithm, params_N, data, W, rounds=ROUNDS):
  state = algorithm.init(jax.tree.map(jnp.array, params_N))
  state, _ = make_chunk_runner(algorithm)(state, data, KEY, jnp.arange(rounds, dtype=jnp.int32),
                                          DenseMixing(jnp.asarray(W, jnp.float32)), False)
  return state


def run_reference(params_N, data, W, rounds=ROUNDS, **options):
  return reference_run(MODEL, params_N, np.asarray(data.x), np.asarray(data.y),
                       np.asarray(data.indices), np.asarray(data.sizes), W, train_key=KEY,
                       rounds=rounds, batch=B, **options)


def node_trees(params_N, n):
  return [jax.tree.map(lambda a: np.asarray(a[i]), params_N) for i in range(n)]


def max_diff(a_list, b_list) -> float:
  return max(float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
             for a_tree, b_tree in zip(a_list, b_list)
             for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree)))


def assert_close(got_list, want_list, atol=2e-5):
  for got, want in zip(got_list, want_list):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-4, atol=atol)


EPOCH_STEPS_N = jnp.asarray([6, 4, 4, 6], jnp.int32)  # E = 2 epochs of ceil(n_i / 4) batches
# name: (build(loss_fn) -> Algorithm, reference options, [options that each turn one off])
CASES = {
    "dfedavg": (lambda f: dfedavg(f, lr=0.3, local_steps=K, batch_size=B),
                dict(steps=K), []),
    # Every optimizer option at once; each one alone must change the result.
    "dfedavgm_options": (
        lambda f: dfedavg(f, lr=0.3, local_steps=K, batch_size=B, momentum=0.8, lr_decay=0.5,
                          weight_decay=0.2, clip_norm=0.3),
        dict(steps=K, momentum=0.8, lr_decay=0.5, weight_decay=0.2, clip_norm=0.3),
        [dict(momentum=0.0), dict(lr_decay=1.0), dict(weight_decay=0.0), dict(clip_norm=None)]),
    "dfedavg_epochs": (
        lambda f: dfedavg(f, lr=0.3, local_steps=6, batch_size=B, max_epochs=2,
                          num_steps_N=EPOCH_STEPS_N),
        dict(epochs=2), [dict(epochs=1)]),
    "dfedsam": (lambda f: dfedsam(f, lr=0.3, rho=0.5, local_steps=K, batch_size=B, momentum=0.5,
                                  weight_decay=0.01, lr_decay=0.8),
                dict(steps=K, rho=0.5, momentum=0.5, weight_decay=0.01, lr_decay=0.8),
                [dict(rho=0.0)]),
    "dfedsam_rho0": (lambda f: dfedsam(f, lr=0.3, rho=0.0, local_steps=K, batch_size=B),
                     dict(steps=K), []),
    "dfedsam_mgs_q1": (lambda f: dfedsam_mgs(f, lr=0.3, rho=0.5, local_steps=K, batch_size=B,
                                             gossip_steps=1),
                       dict(steps=K, rho=0.5), [dict(rho=0.0)]),
    "dfedsam_mgs_q3_epochs": (
        lambda f: dfedsam_mgs(f, lr=0.3, rho=0.5, local_steps=6, batch_size=B, gossip_steps=3,
                              max_epochs=2, num_steps_N=EPOCH_STEPS_N),
        dict(epochs=2, rho=0.5, gossip_steps=3), [dict(gossip_steps=1)]),
    # With momentum 0, D-PSGD with K local steps is DFedAvg: the same reference as "dfedavg".
    "dpsgd_k_steps": (lambda f: dpsgd(f, lr=0.3, batch_size=B, local_steps=K),
                      dict(steps=K), [dict(steps=1)]),
    "dpsgd_epochs_momentum": (
        lambda f: dpsgd(f, lr=0.3, batch_size=B, local_steps=6, momentum=0.8, max_epochs=2,
                        num_steps_N=EPOCH_STEPS_N),
        dict(epochs=2, momentum=0.8, keep_state=True), [dict(keep_state=False)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rounds_equal_the_independent_loop(name):
  build, options, offs = CASES[name]
  loss_fn, params_N, data = tiny_problem(sizes=SIZES)
  W = ring_W()
  got = node_trees(run_code(build(loss_fn), params_N, data, W).params, len(SIZES))
  stats = {}
  want, _ = run_reference(params_N, data, W, lr=0.3, stats=stats, **options)
  assert_close(got, want)
  for off in offs:  # each option matters at this size: a build ignoring it would fail
    without, _ = run_reference(params_N, data, W, lr=0.3, **{**options, **off})
    assert max_diff(want, without) > 1e-3, off
  if options.get("clip_norm"):
    assert stats["clipped"] > 0


def test_kept_momentum_continues_across_rounds():
  """keep_optimizer_state: round 2's momentum buffer continues round 1's (vs the loop's)."""
  loss_fn, params_N, data = tiny_problem(sizes=SIZES)
  W = ring_W()
  kept = run_code(dfedsam(loss_fn, lr=0.3, rho=0.5, local_steps=K, batch_size=B, momentum=0.8,
                          keep_optimizer_state=True), params_N, data, W, rounds=2)
  want, bufs = run_reference(params_N, data, W, rounds=2, lr=0.3, rho=0.5, steps=K,
                             momentum=0.8, keep_state=True)
  reset, reset_bufs = run_reference(params_N, data, W, rounds=2, lr=0.3, rho=0.5, steps=K,
                                    momentum=0.8)
  assert_close(node_trees(kept.params, len(SIZES)), want)
  trace = kept.opt_state[1][0].trace  # chain(identity (no weight decay), sgd = (trace, scale))
  assert_close(node_trees(trace, len(SIZES)), bufs)
  assert max_diff(bufs, reset_bufs) > 1e-3 and max_diff(want, reset) > 1e-3


def test_nesterov_step_equals_the_hand_computation():
  """make_optimizer's nesterov option is exposed only to code; check it on one local phase."""
  loss_fn, params_N, data = tiny_problem(sizes=SIZES)
  optimizer = make_optimizer(lr=0.3, momentum=0.8, nesterov=True)
  local = jax.jit(make_local_sgd(loss_fn, optimizer, local_steps=K, batch_size=B))
  W = np.eye(len(SIZES))  # one local phase per node, no mixing
  got = []
  round_key = jax.random.fold_in(KEY, 0)
  for i in range(len(SIZES)):
    p = jax.tree.map(lambda a: a[i], params_N)
    shard = NodeData(data.x, data.y, data.indices[i], data.sizes[i])
    got.append(local(p, optimizer.init(p), jax.random.fold_in(round_key, i), shard)[0])
  want, _ = run_reference(params_N, data, W, rounds=1, lr=0.3, steps=K, momentum=0.8,
                          nesterov=True)
  heavy_ball, _ = run_reference(params_N, data, W, rounds=1, lr=0.3, steps=K, momentum=0.8)
  assert_close(got, want)
  assert max_diff(want, heavy_ball) > 1e-3


def test_augment_is_applied_to_every_step_batch():
  """A keyed toy augmentation (sign flip plus noise from the step's augment key): the run equals
  the loop that augments each step's batch with fold_in(fold_in(node_key, tag), k)."""
  def augment(key, x_B):
    return -x_B + 0.5 * jax.random.normal(key, x_B.shape)
  loss_fn, params_N, data = tiny_problem(sizes=SIZES)
  W = ring_W()
  got = node_trees(run_code(dfedavg(loss_fn, lr=0.3, local_steps=K, batch_size=B,
                                    augment=augment), params_N, data, W).params, len(SIZES))
  want, _ = run_reference(params_N, data, W, lr=0.3, steps=K, augment=augment)
  assert_close(got, want)
  plain, _ = run_reference(params_N, data, W, lr=0.3, steps=K)
  assert max_diff(want, plain) > 1e-3
