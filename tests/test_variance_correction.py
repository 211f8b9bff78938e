"""Variance-corrected averaging and gossip learning: invariants, hand-computed examples, end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import topologies
from dfl import DenseMixing, SparseMixing, mix, variance_corrected_mix
from dfl.algorithms.gossip import gossip_learning_mixing
from dfl.algorithms.local_then_gossip import local_then_gossip
from dfl.config_checks import validate_config
from dfl.experiment import build_experiment, mixing_operator
from dfl.train import train_and_evaluate
from dfl.variance_correction import layer_variances, tensor_variance

# Three nodes, non-uniform weights: node 0 hears 1 (0.3) and 2 (0.2); nodes 1 and 2 hear only 0.
W3 = np.array([[0.5, 0.3, 0.2],
               [0.3, 0.7, 0.0],
               [0.2, 0.0, 0.8]], np.float32)
# One 4-element tensor per node: population variances 1, 4, 0 (unbiased 4/3, 16/3, 0).
X3 = np.array([[0, 0, 2, 2],
               [0, 4, 0, 4],
               [3, 3, 3, 3]], np.float32)


def threshold_formula(W, X, *, target="follow_others", beta=0.5, ddof=0, strength=1.0,
                      eps=1e-12):
  """dfl's own default (eps_mode='threshold', received_weights='mixing'), which has no DFL_torch
  counterpart: the module docstring's formula, node by node. Its numbers are also checked by hand
  below (test_hand_computed_*); the reference formula is `dfl_torch_reference`."""
  n = len(X)
  own = np.array([np.var(X[i], ddof=ddof) for i in range(n)], np.float64)
  mixed = W.astype(np.float64) @ X.astype(np.float64)
  out = mixed.copy()
  for i in range(n):
    received = [j for j in range(n) if j != i and W[i, j] > 0]
    others = (sum(W[i, j] * own[j] for j in received) / sum(W[i, j] for j in received)
              if received else own[i])
    goal = {"follow_others": others, "follow_self": own[i],
            "conservative": beta * own[i] + (1 - beta) * others}[target]
    v = np.var(mixed[i], ddof=ddof)
    if v > eps:
      scale = 1 + strength * (np.sqrt(goal / v) - 1)
      out[i] = mixed[i].mean() + scale * (mixed[i] - mixed[i].mean())
  return out


# --- DFL_torch (twoentartian/DFL_torch), written from py_src/model_variance_correct.py and
# py_src/model_average.py, on state dicts {name: tensor}, one per node, in float64 numpy.
# Its ignore list is ["num_batches_tracked", "running_mean", "running_var"]: running
# statistics, which flax keeps in the `batch_stats` collection.
TORCH_IGNORED = ("batch_stats",)
TORCH_EPS = 0.0001  # scale_tensor_to_variance's epsilon


def state_dict(tree, prefix=""):
  """Nested dict -> flat {'Conv_0.kernel': array}, like a torch state_dict."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}.{key}" if prefix else key
    out.update(state_dict(value, name) if isinstance(value, dict)
               else {name: np.asarray(value, np.float64)})
  return out


def torch_variance(t):
  """calculate_variance_for_tensor: torch.var (unbiased, ÷(n-1)); 0.0 for a one-element tensor."""
  return 0.0 if t.size == 1 else float(np.var(t, ddof=1))


def torch_scale(t, target):
  """scale_tensor_to_variance: sqrt((target + 1e-4) / (var + 1e-4)) about the tensor's mean."""
  if t.size == 1:
    return t
  mean, current = t.mean(), np.var(t, ddof=1)
  return (t - mean) * np.sqrt((target + TORCH_EPS) / (current + TORCH_EPS)) + mean


def dfl_torch_reference(W, models):
  """FollowOthers on node i: average with weights W[i], then rescale every tensor but running
  statistics to the plain mean of the received (j != i, W[i, j] > 0) models' variances."""
  n, out = len(models), []
  for i in range(n):
    received = [j for j in range(n) if j != i and W[i, j] > 0]
    node = {}
    for name in models[i]:
      averaged = sum(float(W[i, j]) * models[j][name] for j in range(n))
      if any(word in name for word in TORCH_IGNORED) or not received:
        node[name] = averaged
        continue
      target = sum(torch_variance(models[j][name]) for j in received) / len(received)
      node[name] = torch_scale(averaged, target)
    out.append(node)
  return out


def conservative_averager(self_model, received, conservative):
  """ConservativeModelAverager.get_model with a FollowOthers corrector, for one node: the
  received models' mean, blended with the own model, then rescaled."""
  out = {}
  for name, own in self_model.items():
    if any(word in name for word in TORCH_IGNORED):
      out[name] = own  # neither averaged nor corrected there
      continue
    averaged = own * conservative + sum(m[name] for m in received) / len(received) * (1 - conservative)
    target = sum(torch_variance(m[name]) for m in received) / len(received)
    out[name] = torch_scale(averaged, target)
  return out


# The options that make dfl compute DFL_torch's formula (experiments/configs/vca_mnist.py).
DFL_TORCH = dict(estimator="unbiased", eps_mode="additive", eps=1e-4, norm_layers="correct",
                 received_weights="uniform")


def layered_models(n, seed):
  """A small model per node with a conv, a GroupNorm, small-variance and one-element tensors."""
  rng = np.random.default_rng(seed)
  f = lambda *shape, sd=1.0, mu=0.0: (mu + sd * rng.normal(size=(n, *shape))).astype(np.float32)
  return {"Conv_0": {"kernel": f(3, 3, 2, 4, sd=0.2), "bias": f(4, sd=0.01)},
          "GroupNorm_0": {"scale": f(4, sd=0.05, mu=1.0), "bias": f(4, sd=0.02)},
          "Dense_0": {"kernel": f(6, 3, sd=0.5), "bias": np.zeros((n, 3), np.float32)},
          "single": f(1),
          "batch_stats": {"BatchNorm_0": {"mean": f(4)}}}


def per_node(tree, n):
  return [state_dict(jax.tree.map(lambda x: x[i], tree)) for i in range(n)]


def vcm(W, X, **options):
  return np.asarray(variance_corrected_mix(jnp.asarray(W), {"k": jnp.asarray(X)}, **options)["k"])


def test_hand_computed_follow_others_node_1():
  # Node 1 mixes 0.3*x0 + 0.7*x1 = [0, 2.8, 0.6, 3.4]: mean 1.7, variance 8.2/4 = 2.05.
  # It received only x0 (variance 1), so its deviations shrink by sqrt(1/2.05).
  out = vcm(W3, X3)
  expected = 1.7 + np.array([-1.7, 1.1, -1.1, 1.7]) * np.sqrt(1 / 2.05)
  np.testing.assert_allclose(out[1], expected, rtol=1e-5)
  # Node 0: target (0.3*4 + 0.2*0)/0.5 = 2.4.
  np.testing.assert_allclose(np.var(out[0]), 2.4, rtol=1e-5)


@pytest.mark.parametrize("target", ["follow_others", "follow_self", "conservative"])
def test_each_target_matches_reference(target):
  out = vcm(W3, X3, target=target, beta=0.25)
  np.testing.assert_allclose(out, threshold_formula(W3, X3, target=target, beta=0.25), rtol=1e-5, atol=1e-5)


def test_follow_self_and_conservative_by_hand():
  # Node 1 before averaging has variance 4; received 1. Conservative with β = 0.25: 0.25*4 + 0.75*1.
  np.testing.assert_allclose(np.var(vcm(W3, X3, target="follow_self")[1]), 4.0, rtol=1e-5)
  np.testing.assert_allclose(np.var(vcm(W3, X3, target="conservative", beta=0.25)[1]), 1.75,
                             rtol=1e-5)


def test_variance_equals_target_and_mean_unchanged_random():
  rng = np.random.default_rng(0)
  n = 6
  W = topologies.make("ring", n).matrix(0).astype(np.float32)
  params = {"Dense_0": {"kernel": rng.normal(size=(n, 5, 3)).astype(np.float32),
                        "bias": rng.normal(size=(n, 3)).astype(np.float32)}}
  out = variance_corrected_mix(jnp.asarray(W), jax.tree.map(jnp.asarray, params))
  for name in ("kernel", "bias"):
    X = params["Dense_0"][name].reshape(n, -1)
    Y = np.asarray(out["Dense_0"][name]).reshape(n, -1)
    own = X.var(axis=1)
    mixed = W @ X
    for i in range(n):
      nb = [j for j in range(n) if j != i and W[i, j] > 0]
      target = sum(W[i, j] * own[j] for j in nb) / sum(W[i, j] for j in nb)
      np.testing.assert_allclose(Y[i].var(), target, rtol=1e-4)
      np.testing.assert_allclose(Y[i].mean(), mixed[i].mean(), atol=1e-5)


def test_identical_models_is_a_noop():
  rng = np.random.default_rng(1)
  one = rng.normal(size=(4, 3)).astype(np.float32)
  X = np.broadcast_to(one, (4, 4, 3))
  W = topologies.make("ring", 4).matrix(0).astype(np.float32)
  for target in ("follow_others", "follow_self", "conservative"):
    out = variance_corrected_mix(jnp.asarray(W), {"k": jnp.asarray(X)}, target=target)["k"]
    np.testing.assert_allclose(np.asarray(out), X, rtol=1e-5, atol=1e-6)


def test_zero_variance_tensors_stay_finite_and_unchanged():
  n = 3
  params = {"zero_bias": jnp.zeros((n, 4)),
            "constant_per_node": jnp.asarray([[1.0] * 4, [2.0] * 4, [5.0] * 4]),
            "single": jnp.asarray([[1.0], [2.0], [3.0]])}
  for estimator in ("population", "unbiased"):
    out = variance_corrected_mix(jnp.asarray(W3), params, estimator=estimator)
    plain = mix(DenseMixing(jnp.asarray(W3)), params)
    for name in params:
      assert np.all(np.isfinite(np.asarray(out[name])))
      np.testing.assert_allclose(np.asarray(out[name]), np.asarray(plain[name]), rtol=1e-6)


def test_estimator_by_hand():
  # [0, 0, 2, 2]: squared deviations sum to 4 -> 4/4 = 1 (population), 4/3 (unbiased).
  np.testing.assert_allclose(tensor_variance(jnp.asarray(X3), "population"), [1, 4, 0], rtol=1e-6)
  np.testing.assert_allclose(tensor_variance(jnp.asarray(X3), "unbiased"), [4 / 3, 16 / 3, 0],
                             rtol=1e-6)
  # Target and current variance share the factor n/(n-1): away from eps the results agree ...
  np.testing.assert_allclose(vcm(W3, X3, estimator="unbiased"), vcm(W3, X3), rtol=1e-5)
  # ... and it moves the eps threshold: node 1's averaged tensor has variance 2.05 (population)
  # and 2.05*4/3 = 2.733 (unbiased); with eps = 2.5 only the unbiased estimate counts as spread.
  pop = vcm(W3, X3, estimator="population", eps=2.5)
  unb = vcm(W3, X3, estimator="unbiased", eps=2.5)
  np.testing.assert_allclose(pop[1], W3[1] @ X3, rtol=1e-6)  # left as averaged
  np.testing.assert_allclose(unb[1], threshold_formula(W3, X3, ddof=1, eps=2.5)[1], rtol=1e-5)
  np.testing.assert_allclose(np.var(unb[1]), 1.0, rtol=1e-5)


def test_strength_by_hand():
  mixed_1 = W3[1] @ X3
  np.testing.assert_allclose(vcm(W3, X3, strength=0.0), W3 @ X3, rtol=1e-6)
  # r = 0.5 on node 1: scale = 1 + 0.5 (sqrt(1/2.05) - 1).
  scale = 1 + 0.5 * (np.sqrt(1 / 2.05) - 1)
  np.testing.assert_allclose(vcm(W3, X3, strength=0.5)[1], 1.7 + scale * (mixed_1 - 1.7), rtol=1e-5)
  np.testing.assert_allclose(vcm(W3, X3, strength=0.5), threshold_formula(W3, X3, strength=0.5), rtol=1e-5,
                             atol=1e-5)


def test_tensor_selection_and_normalization_never_corrected():
  rng = np.random.default_rng(2)
  n = 3
  params = {"Dense_0": {"kernel": rng.normal(size=(n, 2, 2)), "bias": rng.normal(size=(n, 4))},
            "LayerNorm_0": {"scale": rng.normal(size=(n, 4))},
            "batch_stats": {"mean": rng.normal(size=(n, 4))}}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  flat = lambda t, *path: np.asarray(t[path[0]][path[1]]).reshape(n, -1)
  for tensors, bias_corrected in (("all", True), ("kernels", False)):
    out = variance_corrected_mix(jnp.asarray(W3), params, tensors=tensors)
    for path, corrected in ((("Dense_0", "kernel"), True), (("Dense_0", "bias"), bias_corrected),
                            (("LayerNorm_0", "scale"), False), (("batch_stats", "mean"), False)):
      X = flat(params, *path)
      expected = threshold_formula(W3, X) if corrected else W3 @ X
      np.testing.assert_allclose(flat(out, *path), expected, rtol=1e-4, atol=1e-5,
                                 err_msg=f"{tensors} {path}")


def test_sparse_form_matches_dense():
  rng = np.random.default_rng(3)
  # A ring (equal received weights) and W3 (unequal ones, where 'uniform' differs from 'mixing').
  for W in (topologies.make("ring", 5).matrix(0).astype(np.float32), W3):
    n = len(W)
    indices, weights = topologies.to_neighbors(W)
    # One padded slot per row (weight 0, pointing at the node itself) must change nothing.
    indices = np.concatenate([indices, np.arange(n)[:, None]], axis=1).astype(np.int32)
    weights = np.concatenate([weights, np.zeros((n, 1), np.float32)], axis=1)
    params = {"k": jnp.asarray(rng.normal(size=(n, 3, 2)), jnp.float32)}
    for target, options in (("follow_others", {}), ("conservative", {}),
                            ("follow_others", DFL_TORCH)):
      dense = variance_corrected_mix(jnp.asarray(W), params, target=target, **options)["k"]
      sparse = variance_corrected_mix(SparseMixing(jnp.asarray(indices), jnp.asarray(weights)),
                                      params, target=target, **options)["k"]
      np.testing.assert_allclose(np.asarray(sparse), np.asarray(dense), rtol=1e-5, atol=1e-6)


def test_isolated_nodes_keep_their_model():
  X = np.random.default_rng(4).normal(size=(3, 6)).astype(np.float32)
  np.testing.assert_allclose(vcm(np.eye(3, dtype=np.float32), X), X, rtol=1e-6)


def test_bad_options_name_the_value():
  with pytest.raises(ValueError, match="follow_everyone"):
    vcm(W3, X3, target="follow_everyone")
  with pytest.raises(ValueError, match="strength"):
    vcm(W3, X3, strength=-1.0)


def test_dfl_torch_options_equal_the_reference_formula():
  # Star of 5 with Metropolis-Hastings weights: the hub hears four leaves at 1/5 each, every leaf
  # hears the hub at 1/5 and keeps 4/5. Then a 3-node W whose received weights differ (W3).
  n = 5
  W = topologies.make("star", n).matrix(0).astype(np.float32)
  for W, seed in ((W, 0), (W3, 1)):
    n = len(W)
    params = layered_models(n, seed)
    out = variance_corrected_mix(jnp.asarray(W), jax.tree.map(jnp.asarray, params), **DFL_TORCH)
    want = dfl_torch_reference(W, per_node(params, n))
    for i, (got_i, want_i) in enumerate(zip(per_node(out, n), want)):
      for name in want_i:
        np.testing.assert_allclose(got_i[name], want_i[name], rtol=2e-5, atol=1e-6,
                                   err_msg=f"node {i} {name}")
  # dfl's defaults are a different formula: the GroupNorm leaves are left as averaged, and the
  # small-variance conv bias (var ~1e-4, comparable to eps) is rescaled differently.
  default = per_node(variance_corrected_mix(jnp.asarray(W3), jax.tree.map(jnp.asarray, params)), 3)
  for name in ("GroupNorm_0.scale", "Conv_0.bias"):
    assert not np.allclose(default[0][name], want[0][name], rtol=1e-3, atol=0), name


def test_gossip_learning_with_dfl_torch_options_equals_conservative_averager():
  # DFL_torch's paper setting: ConservativeModelAverager(0.5) with FollowOthers. In dfl that is
  # the gossip algorithm's W = 0.5 I + 0.5 A / deg, corrected with the DFL_torch options.
  # An irregular graph (star of 4: hub degree 3, leaves degree 1).
  n = 4
  mixing = gossip_learning_mixing(DenseMixing(jnp.asarray(topologies.make("star", n).matrix(0))),
                                  0.5)
  params = layered_models(n, 2)
  out = per_node(variance_corrected_mix(mixing, jax.tree.map(jnp.asarray, params), **DFL_TORCH), n)
  models = per_node(params, n)
  neighbours = {0: [1, 2, 3], 1: [0], 2: [0], 3: [0]}
  for i in range(n):
    want = conservative_averager(models[i], [models[j] for j in neighbours[i]], 0.5)
    for name in want:
      if "batch_stats" in name:  # DFL_torch keeps its own statistics; dfl averages every leaf
        continue
      np.testing.assert_allclose(out[i][name], want[name], rtol=2e-5, atol=1e-6,
                                 err_msg=f"node {i} {name}")


def test_additive_and_uniform_by_hand():
  # Node 1 mixes to [0, 2.8, 0.6, 3.4]: unbiased variance 8.2 / 3; it received x0 (unbiased 4/3).
  out = vcm(W3, X3, estimator="unbiased", eps_mode="additive", eps=1e-4)
  scale = np.sqrt((4 / 3 + 1e-4) / (8.2 / 3 + 1e-4))
  np.testing.assert_allclose(out[1], 1.7 + scale * (W3[1] @ X3 - 1.7), rtol=1e-5)
  # Node 0 received x1 (population variance 4) at 0.3 and x2 (0) at 0.2: the W-weighted target
  # is 2.4, the uniform one (4 + 0) / 2 = 2.
  np.testing.assert_allclose(np.var(vcm(W3, X3, received_weights="mixing")[0]), 2.4, rtol=1e-5)
  np.testing.assert_allclose(np.var(vcm(W3, X3, received_weights="uniform")[0]), 2.0, rtol=1e-5)
  # Additive eps on a tensor with no spread anywhere: unchanged (ratio sqrt(eps / eps) = 1).
  zeros = np.zeros((3, 4), np.float32)
  np.testing.assert_array_equal(vcm(W3, zeros, eps_mode="additive", eps=1e-4), zeros)


def test_norm_layers_option():
  params = jax.tree.map(jnp.asarray, layered_models(3, 3))
  plain = per_node(mix(DenseMixing(jnp.asarray(W3)), params), 3)
  for norm_layers in ("skip", "correct"):
    out = per_node(variance_corrected_mix(jnp.asarray(W3), params, norm_layers=norm_layers), 3)
    for i in range(3):
      np.testing.assert_allclose(out[i]["batch_stats.BatchNorm_0.mean"],
                                 plain[i]["batch_stats.BatchNorm_0.mean"], rtol=1e-6)
      same = np.allclose(out[i]["GroupNorm_0.scale"], plain[i]["GroupNorm_0.scale"], rtol=1e-6)
      assert same == (norm_layers == "skip"), (norm_layers, i)


def test_new_options_are_checked():
  for option, value in (("eps_mode", "relative"), ("norm_layers", "some"),
                        ("received_weights", "degree")):
    with pytest.raises(ValueError, match=f"{option}='{value}'"):
      vcm(W3, X3, **{option: value})
  with pytest.raises(ValueError, match="additive.*eps > 0"):
    vcm(W3, X3, eps_mode="additive", eps=0.0)


def test_vca_mnist_config_uses_dfl_torch_formula_and_lenet5():
  from dfl.variance_correction import build_mixer
  from experiments.configs import vca_mnist
  c = vca_mnist.get_config()
  c.variance_correction.enabled = True
  validate_config(c)
  assert c.model.name == "lenet5" and c.algorithm.batch_size == 64
  assert (c.algorithm.lr, c.algorithm.momentum, c.algorithm.weight_decay) == (0.01, 0.9, 1e-4)
  assert c.algorithm.local_steps == 1 and c.algorithm.self_weight == 0.5
  mixer = build_mixer(c.variance_correction)
  params = layered_models(3, 4)
  out = per_node(mixer(DenseMixing(jnp.asarray(W3)), jax.tree.map(jnp.asarray, params)), 3)
  want = dfl_torch_reference(W3, per_node(params, 3))
  for i in range(3):
    for name in want[i]:
      np.testing.assert_allclose(out[i][name], want[i][name], rtol=2e-5, atol=1e-6, err_msg=name)


def test_layer_variances_names_leaves():
  v = layer_variances({"Dense_0": {"kernel": jnp.asarray(X3)}})
  np.testing.assert_allclose(v["Dense_0/kernel"], [1, 4, 0], rtol=1e-6)


def test_gossip_learning_mixing_dense_and_sparse():
  # Ring of 5 (MH weights 1/3): gossip learning ignores them, W = 0.5 I + 0.25 (left + right).
  W = topologies.make("ring", 5).matrix(0).astype(np.float32)
  A = ((W != 0) & ~np.eye(5, dtype=bool)).astype(np.float32)
  expected = 0.5 * np.eye(5) + 0.25 * A
  dense = gossip_learning_mixing(DenseMixing(jnp.asarray(W)), 0.5)
  np.testing.assert_allclose(np.asarray(dense.W), expected, rtol=1e-6)
  sparse = gossip_learning_mixing(SparseMixing(*map(jnp.asarray, topologies.to_neighbors(W))), 0.5)
  x = {"k": jnp.asarray(np.random.default_rng(5).normal(size=(5, 4)), jnp.float32)}
  np.testing.assert_allclose(np.asarray(mix(sparse, x)["k"]), expected @ np.asarray(x["k"]),
                             rtol=1e-5, atol=1e-6)


def test_mixer_is_applied_once_per_gossip_step():
  calls = []

  def counting_mixer(mixing, params):
    calls.append(1)
    return mix(mixing, params)
  identity = lambda params, opt_state, key, data, lr_scale: (params, opt_state, jnp.float32(0))
  import optax
  from dfl.algorithms.base import RoundInputs
  from dfl.local import NodeData
  alg = local_then_gossip(identity, optax.sgd(0.1), gossip_steps=3, mixer=counting_mixer)
  W = topologies.make("ring", 4).matrix(0).astype(np.float32)
  x = {"k": jnp.asarray(np.arange(8.0).reshape(4, 2), jnp.float32)}
  data = NodeData(jnp.zeros((4, 1)), jnp.zeros(4, jnp.int32), jnp.zeros((4, 1), jnp.int32),
                  jnp.ones(4, jnp.int32))
  state, _ = alg.round(alg.init(x), RoundInputs(jnp.int32(0), jax.random.key(0),
                                                DenseMixing(jnp.asarray(W)), data))
  assert len(calls) == 3
  np.testing.assert_allclose(np.asarray(state.params["k"]),
                             np.linalg.matrix_power(W, 3) @ np.asarray(x["k"]), rtol=1e-5)


def test_config_errors(tiny):
  c = tiny()
  c.variance_correction.enabled = True
  c.variance_correction.target = "follow_all"
  with pytest.raises(ValueError, match="variance_correction.target='follow_all'"):
    validate_config(c)
  for field, value in (("eps_mode", "exact"), ("norm_layers", "all"),
                       ("received_weights", "sizes")):
    c = tiny()
    c.variance_correction.enabled = True
    c.variance_correction[field] = value
    with pytest.raises(ValueError, match=f"variance_correction.{field}='{value}'"):
      validate_config(c)
  c = tiny()
  c.variance_correction.enabled = True
  c.variance_correction.eps_mode, c.variance_correction.eps = "additive", 0.0
  with pytest.raises(ValueError, match="variance_correction.eps must be > 0"):
    validate_config(c)
  c = tiny(algorithm__name="fedavg")
  c.variance_correction.enabled = True
  with pytest.raises(ValueError, match="needs a gossip algorithm"):
    validate_config(c)
  with pytest.raises(ValueError, match="self_weight"):
    validate_config(tiny(algorithm__name="gossip", algorithm__self_weight=1.0))


def _kernel_variance_ratio(config, rounds: int) -> float:
  """Mean over nodes and kernels of Var(after `rounds` rounds) / Var(at init)."""
  exp = build_experiment(config)
  mixing = mixing_operator(exp.topology, 0, sparse=False)
  state = exp.algorithm.init(exp.init_params)
  before = layer_variances(exp.init_params)
  state, metrics = exp.run_chunk(state, exp.data, exp.train_key, jnp.arange(rounds), mixing, False)
  assert np.all(np.isfinite(np.asarray(metrics.loss)))
  after = layer_variances(state.params)
  return float(np.mean([np.mean(after[k] / before[k]) for k in before if k.endswith("kernel")]))


@pytest.mark.parametrize("algorithm", ["dfedavg", "gossip"])
def test_end_to_end_flag_restores_variance(tiny, algorithm):
  # Independent inits on a ring: plain averaging of uncorrelated models shrinks every kernel's
  # variance (by about 1/3 per round at first); the corrected runs keep it near its initial value.
  ratio = {}
  for enabled in (False, True):
    c = tiny(algorithm__name=algorithm, model__same_init=False, algorithm__lr=0.01)
    c.variance_correction.enabled = enabled
    ratio[enabled] = _kernel_variance_ratio(c, rounds=3)
  assert ratio[False] < 0.4, ratio  # W^3 of the 4-ring alone gives about 0.26
  assert 0.8 < ratio[True] < 1.25, ratio


def test_driver_runs_gossip_with_correction(tiny, tmp_path):
  c = tiny(algorithm__name="gossip", model__same_init=False)
  c.variance_correction.enabled = True
  summary = train_and_evaluate(c, str(tmp_path))
  assert np.isfinite(summary["final_train_loss"]) and summary["comm_bytes"] > 0
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1 + c.train.rounds // 2
