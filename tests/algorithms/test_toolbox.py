"""The decentralized-optimization toolbox: least squares, full batches, x*, and the exact methods
(gradient tracking, exact diffusion, QGM), each checked against a plain numpy loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.algorithms import BuildContext, build_algorithm
from dfl.algorithms.base import RoundInputs
from dfl.config_checks import validate_config
from dfl.data.least_squares import least_squares_problem
from dfl.experiment import build_experiment, mixing_operator
from dfl.local import NodeData, make_local_sgd, make_optimizer, minibatch_gradient
from dfl.models import LogReg, cross_entropy_loss
from dfl.optimum import logreg_optimum, sample_weights
from experiments.configs import default
from tests.algorithms._tiny import tiny_problem

N, D, n = 6, 5, 8


def ls_config(algorithm="gradient_tracking", heterogeneity=1.0, **algorithm_fields):
  c = default.get_config()
  c.num_nodes = N
  c.data.name, c.model.name = "least_squares", "linear"
  c.data.dim, c.data.samples_per_node, c.data.heterogeneity = D, n, heterogeneity
  c.topology.name = "ring"
  c.algorithm.name, c.algorithm.batch_size, c.algorithm.lr = algorithm, 0, 0.05
  for k, v in algorithm_fields.items():
    c.algorithm[k] = v
  c.eval.local_examples = 0
  return c


def run_rounds(exp, rounds: int):
  """`rounds` rounds of the experiment's algorithm in one scan (static W); the final state."""
  mixing = mixing_operator(exp.topology, 0, False)

  @jax.jit
  def run(state):
    def body(state, t):
      inputs = RoundInputs(t, jax.random.fold_in(exp.train_key, t), mixing, exp.data,
                           exp.train_key)
      return exp.algorithm.round(state, inputs)[0], None
    return jax.lax.scan(body, state, jnp.arange(rounds, dtype=jnp.int32))[0]
  return run(exp.algorithm.init(exp.init_params))


def kernel(params):
  return np.asarray(params["Dense_0"]["kernel"], np.float64)[..., 0]  # [N, D] or [D]


# ---------------------------------------------------------------- the problem and x*

def test_every_node_is_1_smooth_and_0_1_strongly_convex():
  a, b, node_ids = least_squares_problem(N, D, n, heterogeneity=2.0, seed=3)
  hessians = [a[node_ids == i].T @ a[node_ids == i] / n for i in range(N)]
  for h in hessians:
    eig = np.linalg.eigvalsh(h)
    assert eig.max() <= 1.0 + 1e-9 and eig.min() >= 0.1 - 1e-9
  eig = np.linalg.eigvalsh(np.mean(hessians, axis=0))  # the global objective's Hessian
  assert eig.max() <= 1.0 + 1e-9 and eig.min() >= 0.1 - 1e-9


def test_node_i_trains_on_exactly_its_own_rows_and_x_star_is_the_global_lstsq():
  exp = build_experiment(ls_config(heterogeneity=1.0))
  a, b, node_ids = least_squares_problem(N, D, n, 1.0, seed=exp.config.seed * 1000 + 2)
  for i in range(N):
    rows = np.asarray(exp.data.indices[i])[:int(exp.data.sizes[i])]
    np.testing.assert_array_equal(np.sort(rows), np.flatnonzero(node_ids == i))
    np.testing.assert_allclose(np.asarray(exp.data.x)[rows], a[rows], rtol=1e-6)
  # Equal shards: (1/N) sum_i (1/2n)||A_i x - b_i||^2 is the pooled least squares.
  x_star = np.linalg.lstsq(a.astype(np.float32).astype(np.float64),
                           b.astype(np.float32).astype(np.float64), rcond=None)[0]
  np.testing.assert_allclose(kernel(exp.optimum), x_star, rtol=1e-9, atol=1e-9)
  local = [np.linalg.lstsq(a[node_ids == i], b[node_ids == i], rcond=None)[0] for i in range(N)]
  assert np.std(local, axis=0).max() > 0.3  # heterogeneous: the nodes' own minimizers differ


def test_homogeneous_nodes_share_the_minimizer():
  a, b, node_ids = least_squares_problem(N, D, n, heterogeneity=0.0, seed=1)
  local = [np.linalg.lstsq(a[node_ids == i], b[node_ids == i], rcond=None)[0] for i in range(N)]
  np.testing.assert_allclose(local, np.broadcast_to(local[0], (N, D)), atol=1e-10)
  assert np.abs(a[node_ids == 0] - a[node_ids == 1]).max() > 0.1  # their data still differ


def test_logreg_optimum_zeroes_the_gradient_of_the_global_objective():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 3)).astype(np.float32)
  y = rng.integers(0, 3, size=40).astype(np.int32)
  shards = [np.arange(0, 25), np.arange(25, 40)]  # unequal: F weights node 1's samples more
  l2 = 0.1
  w_star, c_star = logreg_optimum(x, y, sample_weights(shards, 40), 3, l2)
  loss = cross_entropy_loss(LogReg(3), l2)
  with jax.enable_x64(True):
    params = {"Dense_0": {"kernel": jnp.asarray(w_star), "bias": jnp.asarray(c_star)}}
    xd = jnp.asarray(x, jnp.float64)
    objective = lambda p: sum(loss(p, xd[s], jnp.asarray(y[s])) for s in shards) / 2
    grads = jax.jit(jax.grad(objective))(params)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-8
    assert jnp.abs(params["Dense_0"]["kernel"]).max() > 0.05  # not the trivial point


# ---------------------------------------------------------------- full batches, the helper

def test_full_batch_step_is_the_exact_gradient_of_the_node_loss_on_unequal_shards():
  loss_fn, params_N, data = tiny_problem(sizes=(12, 7, 5, 12))
  params = jax.tree.map(lambda p: p[1], params_N)
  node = NodeData(data.x, data.y, data.indices[1], data.sizes[1])
  _, g = jax.jit(lambda p: minibatch_gradient(loss_fn, p, jax.random.key(0), node,
                                              batch_size=0))(params)
  rows = np.arange(12, 19)  # node 1's 7 rows; its row is padded to 12 slots
  expected = jax.jit(jax.grad(lambda p: loss_fn(p, data.x[rows], data.y[rows])))(params)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_minibatch_gradient_reads_the_batch_local_sgd_steps_on():
  """SGD with lr 1: local SGD's step k moves the model by minus the gradient on batch k."""
  loss_fn, params_N, data = tiny_problem(sizes=(12, 7, 5, 12))
  params = jax.tree.map(lambda p: p[0], params_N)
  node = NodeData(data.x, data.y, data.indices[0], data.sizes[0])
  key = jax.random.key(5)
  opt = make_optimizer(lr=1.0)
  after = {k: jax.jit(make_local_sgd(loss_fn, opt, local_steps=k, batch_size=4))(
      params, opt.init(params), key, node)[0] for k in (1, 2, 3)}
  after[0] = params
  for step in (0, 2):  # batch 2 of node 0's 12 samples: the last of epoch 0
    _, g = jax.jit(lambda p: minibatch_gradient(loss_fn, p, key, node, batch_size=4,
                                                step=step))(after[step])
    for b, a, gi in zip(jax.tree.leaves(after[step]), jax.tree.leaves(after[step + 1]),
                        jax.tree.leaves(g)):
      np.testing.assert_allclose(b - a, gi, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- numpy re-implementations

def numpy_problem(exp):
  """Node i's A_i, b_i (float64 of the device data) and the dense ring W."""
  x, y = np.asarray(exp.data.x, np.float64), np.asarray(exp.data.y, np.float64)
  rows = [np.asarray(exp.data.indices[i])[:int(exp.data.sizes[i])] for i in range(N)]
  W = np.asarray(exp.topology.matrix(0), np.float64)
  return [x[r] for r in rows], [y[r] for r in rows], W


def grad(A, b, X):
  """[N, D]: grad f_i(x_i) = A_i^T (A_i x_i - b_i) / n_i."""
  return np.stack([A[i].T @ (A[i] @ X[i] - b[i]) / len(b[i]) for i in range(len(A))])


def numpy_kgt(A, b, W, X, eta, K, rounds):
  C = np.zeros_like(X)
  for _ in range(rounds):
    Z = X.copy()
    for _ in range(K):
      Z = Z - eta * (grad(A, b, Z) + C)
    delta = X - Z
    X = W @ (X - delta)
    C = C + (W @ delta - delta) / (K * eta)
  return X


def numpy_dsgt(A, b, W, X, eta, rounds):
  """y^0 = g(x^0); x <- W (x - eta y); y <- W y + g(x_new) - g(x)."""
  Y = grad(A, b, X)
  for _ in range(rounds):
    X_new = W @ (X - eta * Y)
    Y = W @ Y + grad(A, b, X_new) - grad(A, b, X)
    X = X_new
  return X


def numpy_exact_diffusion(A, b, W, X, eta, rounds):
  W_bar = (np.eye(len(W)) + W) / 2
  psi = X.copy()
  for _ in range(rounds):
    psi_new = X - eta * grad(A, b, X)
    X = W_bar @ (psi_new + X - psi)
    psi = psi_new
  return X


def numpy_qgm(A, b, W, X, eta, beta, rounds):
  m_hat = np.zeros_like(X)
  for _ in range(rounds):
    X_new = W @ (X - eta * (beta * m_hat + grad(A, b, X)))
    m_hat = beta * m_hat + (1 - beta) * (X - X_new) / eta
    X = X_new
  return X


@pytest.mark.parametrize("name, fields, reference", [
    ("gradient_tracking", {}, lambda A, b, W, X, r: numpy_dsgt(A, b, W, X, 0.05, r)),
    ("gradient_tracking", {"local_steps": 1},
     lambda A, b, W, X, r: numpy_kgt(A, b, W, X, 0.05, 1, r)),
    ("gradient_tracking", {"local_steps": 3},
     lambda A, b, W, X, r: numpy_kgt(A, b, W, X, 0.05, 3, r)),
    ("exact_diffusion", {}, lambda A, b, W, X, r: numpy_exact_diffusion(A, b, W, X, 0.05, r)),
    ("qgm", {"momentum": 0.8}, lambda A, b, W, X, r: numpy_qgm(A, b, W, X, 0.05, 0.8, r)),
])
def test_against_numpy_loop_of_the_equations(name, fields, reference):
  c = ls_config(name, heterogeneity=1.0, **fields)
  c.model.same_init = False  # the nodes start apart: the mixing terms matter from round 0
  exp = build_experiment(c)
  A, b, W = numpy_problem(exp)
  X0 = kernel(exp.init_params)
  for rounds in (1, 7):
    got = kernel(run_rounds(exp, rounds).params)
    np.testing.assert_allclose(got, reference(A, b, W, X0, rounds), rtol=2e-5, atol=2e-6)


def test_gradient_tracking_sends_two_vectors_per_edge():
  exp = build_experiment(ls_config("gradient_tracking"))
  mixing = mixing_operator(exp.topology, 0, False)
  inputs = RoundInputs(jnp.int32(0), exp.train_key, mixing, exp.data, exp.train_key)
  metrics = exp.algorithm.round(exp.algorithm.init(exp.init_params), inputs)[1]
  assert int(metrics.transfers) == 2 * 2 * N  # a ring: 2 neighbours each, x and the update
  np.testing.assert_array_equal(metrics.sent_N, np.full(N, 4))


# ---------------------------------------------------------------- convergence to x*

ROUNDS = 1500


def run_rounds_float64(exp, rounds: int):
  """run_rounds with the data, the models and W in float64 (jax.enable_x64): in float32 exact
  diffusion's implicit dual variable (the running sum of x^t - psi^t) accumulates rounding
  errors of ~1e-7 |x| per round, uncorrected, which leaves it ~1e-6..1e-5 from x* after
  thousands of rounds (gradient tracking's corrections shrink with its updates and reach 1e-11)."""
  f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)
  with jax.enable_x64(True):
    data = NodeData(f64(exp.data.x), f64(exp.data.y), exp.data.indices, exp.data.sizes)
    W = jnp.asarray(np.asarray(exp.topology.matrix(0), np.float64))
    mixing = type(mixing_operator(exp.topology, 0, False))(W)

    @jax.jit
    def run(state):
      def body(state, t):
        inputs = RoundInputs(t, jax.random.fold_in(exp.train_key, t), mixing, data,
                             exp.train_key)
        return exp.algorithm.round(state, inputs)[0], None
      return jax.lax.scan(body, state, jnp.arange(rounds, dtype=jnp.int32))[0]
    return jax.device_get(run(exp.algorithm.init(f64(exp.init_params))))


@pytest.mark.parametrize("heterogeneity", [2.0, 0.0])
def test_exact_methods_reach_x_star_where_dpsgd_stalls(heterogeneity):
  """Full batches, constant step 0.05, in float64 (run_rounds_float64), against the normal
  equations' x*: gradient tracking and exact diffusion converge to it on heterogeneous nodes,
  D-PSGD stops at a heterogeneity-dependent distance; on homogeneous nodes all three reach it."""
  dist = {}
  for name in ("gradient_tracking", "exact_diffusion", "dpsgd"):
    exp = build_experiment(ls_config(name, heterogeneity))
    x_bar = kernel(run_rounds_float64(exp, ROUNDS).params).mean(axis=0)
    dist[name] = float(np.sum((x_bar - kernel(exp.optimum)) ** 2))
  assert dist["gradient_tracking"] <= 1e-10 and dist["exact_diffusion"] <= 1e-10, dist
  if heterogeneity:
    assert dist["dpsgd"] > 1e-5, dist  # D-PSGD's fixed point is off by O(eta^2 zeta^2)
  else:
    assert dist["dpsgd"] <= 1e-10, dist


def test_gradient_tracking_reaches_x_star_in_float32_too():
  exp = build_experiment(ls_config("gradient_tracking", 2.0))
  x_bar = kernel(run_rounds(exp, ROUNDS).params).mean(axis=0)
  assert np.sum((x_bar - kernel(exp.optimum)) ** 2) <= 1e-10


# ---------------------------------------------------------------- config errors

@pytest.mark.parametrize("fields, message", [
    ({"data.name": "least_squares"}, "model.name='linear'"),  # with the default mlp
    ({"model.name": "linear"}, "data.name='least_squares'"),
    ({"data.heterogeneity": 1.0}, "data.heterogeneity=1.0 is only used by"),
    ({"data.name": "least_squares", "model.name": "linear", "data.heterogeneity": -1.0},
     "data.heterogeneity must be"),
    ({"data.name": "least_squares", "model.name": "linear", "data.samples_per_node": 3},
     "data.samples_per_node"),
    ({"data.name": "least_squares", "model.name": "linear", "eval.personal_test": True},
     "eval.personal_test"),
    ({"algorithm.batch_size": -1}, "algorithm.batch_size"),
    ({"model.l2": -0.1}, "model.l2"),
    ({"algorithm.name": "qgm", "variance_correction.enabled": True}, "variance_correction"),
])
def test_bad_problem_fields_name_the_field(fields, message):
  c = default.get_config()
  for dotted, value in fields.items():
    section, leaf = dotted.split(".")
    c[section][leaf] = value
  with pytest.raises(ValueError, match=message):
    validate_config(c)


@pytest.mark.parametrize("name, fields, message", [
    ("exact_diffusion", {"local_steps": 3}, "algorithm.local_steps=3"),
    ("qgm", {"local_steps": 2}, "algorithm.local_steps=2"),
    ("qgm", {"momentum": 1.0}, "algorithm.momentum"),
    ("gradient_tracking", {"momentum": 0.9}, "algorithm.momentum=0.9"),
    ("gradient_tracking", {"local_epochs": 1}, "algorithm.local_epochs"),
    ("exact_diffusion", {"clip_norm": 1.0}, "algorithm.clip_norm"),
])
def test_builders_refuse_what_they_would_ignore(name, fields, message):
  a = default.get_config().algorithm
  a.name = name
  for k, v in fields.items():
    a[k] = v
  loss_fn, _, _ = tiny_problem()
  with pytest.raises(ValueError, match=message):
    build_algorithm(a, BuildContext(loss_fn, 4, np.full(4, 12)))


def test_full_batches_run_every_algorithm_of_the_driver(tmp_path):
  """batch_size = 0 through the whole driver, including local epochs (one step per epoch)."""
  from dfl.train import train_and_evaluate
  c = ls_config("dfedavg", local_epochs=2)
  c.train.rounds, c.eval.every_rounds = 2, 2
  summary = train_and_evaluate(c, str(tmp_path))
  assert "final_test_accuracy" not in summary and summary["final_distance_to_optimum"] > 0
  assert summary["best_test_loss"] <= summary["final_test_loss"] + 1e-12


# ---------------------------------------------------------------- the driver around them

def test_least_squares_seeds_batch_only_when_they_share_a_problem(tmp_path):
  from dfl.batching import IncompatibleRuns, RunBatch, compatible_groups
  from dfl.experiment import build_experiment
  from tests.conftest import run_seeds
  c = ls_config("exact_diffusion")
  c.train.rounds, c.eval.every_rounds = 2, 2
  other = c.copy_and_resolve_references()
  other.seed = 1
  exps = [build_experiment(c), build_experiment(other)]
  with pytest.raises(IncompatibleRuns, match="fix data.seed"):  # each seed its own problem
    RunBatch(exps)
  assert compatible_groups(exps) == [[0], [1]]  # so they run one after the other
  c.data.seed = 7  # one problem for every seed: one batch, equal to the separate runs
  summaries = run_seeds(c, [0, 1], [tmp_path / "c", tmp_path / "d"])
  from dfl.train import train_and_evaluate
  c.seed = 1
  separate = train_and_evaluate(c, str(tmp_path / "e"))
  assert summaries[1]["final_distance_to_optimum"] == pytest.approx(
      separate["final_distance_to_optimum"], rel=1e-5)


@pytest.mark.parametrize("name", ["gradient_tracking", "exact_diffusion", "qgm"])
def test_resumed_run_equals_uninterrupted_bit_for_bit(name, tmp_path):
  """Stopping after 2 rounds and extending train.rounds to 4 resumes from the checkpoint (the
  second variable included) and writes the records of the run that never stopped."""
  from dfl.train import train_and_evaluate
  import json
  c = ls_config(name, local_steps=2) if name == "gradient_tracking" else ls_config(name)
  c.algorithm.batch_size = 4  # stochastic: the replayed batches must be the same too
  c.train.rounds, c.eval.every_rounds, c.checkpoint.every_rounds = 4, 2, 2
  train_and_evaluate(c, str(tmp_path / "whole"))
  c.train.rounds = 2
  train_and_evaluate(c, str(tmp_path / "parts"))
  c.train.rounds = 4
  train_and_evaluate(c, str(tmp_path / "parts"))
  read = lambda d: [{k: v for k, v in json.loads(line).items() if k != "wall_seconds"}
                    for line in open(tmp_path / d / "metrics.jsonl")]
  assert read("parts") == read("whole")
