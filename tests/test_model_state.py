"""Models with state and randomness (dfl/model_state.py): BatchNorm statistics carried per node,
mixed by gossip or kept, averaged by the FedAvg server, resumed bit for bit and re-estimated for
the averaged model; dropout keys per node and step; the refusals; model.norm for the CIFAR
models. The expected statistics are computed by hand in numpy from the shards (a BatchNorm of
the input depends on the data alone), never with the code under test."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dfl.algorithms.local_then_gossip import GossipState, StatefulGossipState
from dfl.config_checks import validate_config
from dfl.errors import UserError
from dfl.experiment import build_experiment
from dfl.local import NodeData, make_local_sgd, make_optimizer
from dfl.models import make_model, make_train_loss
from dfl.train import train_and_evaluate
from tests._stateful_models import MOMENTUM, WithDropout
from tests.conftest import tiny_config

INPUT_BN = "tests._stateful_models:InputBN"
HIDDEN_BN = "tests._stateful_models:HiddenBN"
EPS = 1e-5  # flax BatchNorm's default epsilon
# Metropolis-Hastings weights of the ring of 4 nodes: 1/3 on the node and on each neighbour.
RING4 = np.array([[1, 1, 0, 1], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]]) / 3.0


def _config(**overrides):
  return tiny_config(**{"model__name": INPUT_BN, "algorithm__name": "dfedavg",
                        "algorithm__batch_size": 1024, **overrides})


def _run(exp, rounds: int):
  state = exp.algorithm.init(exp.init_params)
  state, _ = exp.run_rounds(state, 0, rounds)
  return state


def _shard_moments(exp):
  """[N, D] mean and biased variance of each node's flattened shard, in float64."""
  x = np.asarray(exp.dataset.x_train, np.float64).reshape(len(exp.dataset.x_train), -1)
  return (np.stack([x[s].mean(0) for s in exp.shards]),
          np.stack([x[s].var(0) for s in exp.shards]))


def _after_full_batch_steps(mu, var, steps):
  """flax's running averages after `steps` updates on the same full batch from (0, 1):
  s <- m s + (1 - m) b, so s_K = m^K s_0 + (1 - m^K) b."""
  decay = MOMENTUM ** steps
  return (1 - decay) * mu, decay + (1 - decay) * var


def _stats(state):
  bn = state.model_state["batch_stats"]["BatchNorm_0"]
  return np.asarray(bn["mean"], np.float64), np.asarray(bn["var"], np.float64)


@pytest.mark.parametrize("name,gossip_steps", [("dfedavg", None), ("dpsgd", None),
                                               ("dfedsam", None), ("dfedsam_mgs", 2)])
def test_one_round_carries_each_nodes_statistics_then_mixes_them_with_w(name, gossip_steps):
  # Every step reads the node's whole shard (batch 1024 > every shard, its padding masked out
  # of the statistics), 2 steps. DFedSAM: the perturbed pass must not update them again.
  # DFedSAM-MGS: Q = 2 gossip steps mix them with W^2, as the parameters.
  exp = build_experiment(_config(algorithm__name=name, algorithm__rho=0.05,
                                 algorithm__gossip_steps=gossip_steps))
  assert exp.topology.name == "ring"
  state = _run(exp, 1)
  assert isinstance(state, StatefulGossipState)
  mu, var = _after_full_batch_steps(*_shard_moments(exp), steps=2)
  W = np.linalg.matrix_power(RING4, gossip_steps or 1)
  mean, variance = _stats(state)
  np.testing.assert_allclose(mean, W @ mu, atol=2e-6)
  np.testing.assert_allclose(variance, W @ var, atol=2e-6)


def test_average_stats_false_keeps_each_nodes_own_and_no_op_steps_keep_them():
  # One local epoch of batches of the smallest shard's size: the smallest node takes one step
  # (its whole shard) and keeps its statistics on the scan's remaining no-op steps.
  exp0 = build_experiment(_config())
  sizes = np.array([len(s) for s in exp0.shards])
  b = int(sizes.min())
  assert sizes.max() > b  # unequal step counts: masked no-op steps exist
  exp = build_experiment(_config(algorithm__batch_size=b, algorithm__local_steps=None,
                                 algorithm__local_epochs=1, model__average_stats=False))
  state = _run(exp, 1)
  one_step = sizes == b
  mu, var = _after_full_batch_steps(*_shard_moments(exp), steps=1)
  mean, variance = _stats(state)
  np.testing.assert_allclose(mean[one_step], mu[one_step], atol=2e-6)
  np.testing.assert_allclose(variance[one_step], var[one_step], atol=2e-6)
  assert not np.allclose(mean[~one_step], mu[~one_step], atol=1e-3)  # more steps, other stats


@pytest.mark.parametrize("name,average_stats", [("fedavg", True), ("fedavg", False),
                                                ("fedsam", True)])
def test_fedavg_server_averages_the_statistics_or_clients_keep_their_own(name, average_stats):
  exp = build_experiment(_config(algorithm__name=name, algorithm__client_fraction=1.0,
                                 algorithm__rho=0.05, model__average_stats=average_stats))
  state = _run(exp, 1)
  mu, var = _after_full_batch_steps(*_shard_moments(exp), steps=2)
  mean, variance = _stats(state)
  if average_stats:
    mu, var = np.broadcast_to(mu.mean(0), mu.shape), np.broadcast_to(var.mean(0), var.shape)
  np.testing.assert_allclose(mean, mu, atol=2e-6)
  np.testing.assert_allclose(variance, var, atol=2e-6)


def test_statistics_count_in_the_bytes_only_when_they_are_sent():
  d = 64  # digits: 8 x 8 inputs, BatchNorm mean and var of 64 features
  sent = build_experiment(_config()).model_bytes
  kept = build_experiment(_config(model__average_stats=False)).model_bytes
  assert sent - kept == 2 * d * 4


def _final_state(workdir, rounds):
  return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(rounds) / "state")


def _records(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_seconds"} for line in f]


def test_a_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path):
  overrides = dict(model__name=HIDDEN_BN, algorithm__name="dfedavgm",
                   algorithm__keep_optimizer_state=True, algorithm__batch_size=32,
                   checkpoint__every_rounds=2, data__augment="none")
  train_and_evaluate(_config(train__rounds=4, **overrides), str(tmp_path / "straight"))
  train_and_evaluate(_config(train__rounds=2, **overrides), str(tmp_path / "resumed"))
  train_and_evaluate(_config(train__rounds=4, **overrides), str(tmp_path / "resumed"))
  straight, resumed = _final_state(tmp_path / "straight", 4), _final_state(tmp_path / "resumed", 4)
  assert jax.tree.structure(straight) == jax.tree.structure(resumed)
  assert "model_state" in straight
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  assert _records(tmp_path / "straight") == _records(tmp_path / "resumed")


def _numpy_loss(params, mean, var, x, y):
  """Test loss of HiddenBN in eval mode, by hand."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  h = (h - mean) / np.sqrt(var + EPS) * p["BatchNorm_0"]["scale"] + p["BatchNorm_0"]["bias"]
  logits = np.maximum(h, 0) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
  logits -= logits.max(1, keepdims=True)
  return float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y]))


def test_after_a_final_merge_the_averaged_model_is_evaluated_with_re_estimated_statistics():
  # One calibration batch as large as the pooled shards: the re-estimated statistics are the
  # mean and biased variance of the first layer's output over all training samples.
  config = _config(model__name=HIDDEN_BN, train__rounds=2, topology__schedule="final_merge",
                   eval__recompute_stats_batches=1, algorithm__batch_size=4096)
  exp = build_experiment(config)
  state = _run(exp, 2)
  params = jax.tree.map(lambda a: np.asarray(a, np.float64).mean(0), state.params)
  flat = lambda a: np.asarray(a, np.float64).reshape(len(a), -1)
  x_pool = flat(exp.dataset.x_train)[np.concatenate(exp.shards)]
  h = x_pool @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
  x_test, y_test = flat(exp.dataset.x_test), np.asarray(exp.dataset.y_test)
  expected = _numpy_loss(params, h.mean(0), h.var(0), x_test, y_test)
  figures = exp.evaluate(state.params, None, state.model_state)
  np.testing.assert_allclose(float(figures["test_loss"]), expected, rtol=1e-4)

  # Without re-estimation: the nodes' mean statistics (after the merge, the merged ones).
  plain = build_experiment(_config(model__name=HIDDEN_BN, train__rounds=2,
                                   topology__schedule="final_merge", algorithm__batch_size=4096))
  bn = state.model_state["batch_stats"]["BatchNorm_0"]
  mean, var = (np.asarray(bn[k], np.float64).mean(0) for k in ("mean", "var"))
  averaged = _numpy_loss(params, mean, var, x_test, y_test)
  np.testing.assert_allclose(float(plain.evaluate(state.params, None, state.model_state)[
      "test_loss"]), averaged, rtol=1e-4)
  assert abs(averaged - expected) > 1e-3  # the two differ: the test sees which one is used


def _dropout_run(workdir, name, seed=0, rate=None):
  config = _config(model__name=f"tests._stateful_models:{name}", train__rounds=2,
                   algorithm__batch_size=16, seed=seed)
  if rate is not None:
    config.model.kwargs.rate = rate
  train_and_evaluate(config, str(workdir))
  return _records(workdir)


def test_dropout_is_reproducible_per_seed_and_rate_0_is_the_model_without_it(tmp_path):
  first = _dropout_run(tmp_path / "a", "WithDropout")
  assert _dropout_run(tmp_path / "b", "WithDropout") == first  # same seed: same masks
  assert _dropout_run(tmp_path / "c", "WithDropout", seed=1) != first
  no_dropout = _dropout_run(tmp_path / "d", "WithDropout", rate=0.0)
  assert no_dropout == _dropout_run(tmp_path / "e", "WithoutDropout")
  assert no_dropout != first  # rate 0.5 changed the training


def test_nodes_and_steps_draw_different_dropout_masks():
  model = WithDropout(rate=0.5, num_classes=3)
  loss = make_train_loss("user", model, (), takes_mask=False)
  x = jax.random.normal(jax.random.key(0), (32, 5))
  data = NodeData(x, jnp.arange(32) % 3, jnp.arange(32, dtype=jnp.int32), jnp.int32(32))
  params = model.init(jax.random.key(1), x[:1])["params"]
  optimizer = make_optimizer(lr=0.5)
  local = make_local_sgd(loss, optimizer, local_steps=1, batch_size=0)  # no shuffling
  run = lambda key: local(params, optimizer.init(params), key, data, 1.0, None, {})[0]
  key = jax.random.key(7)
  node_0, node_1 = (run(jax.random.fold_in(key, i)) for i in range(2))
  leaves = lambda p: np.concatenate([np.ravel(a) for a in jax.tree.leaves(p)])
  np.testing.assert_array_equal(leaves(run(jax.random.fold_in(key, 0))), leaves(node_0))
  assert not np.allclose(leaves(node_0), leaves(node_1))  # same data, other mask
  # Rate 0: the key no longer matters.
  loss0 = make_train_loss("user", WithDropout(rate=0.0, num_classes=3), (), takes_mask=False)
  local0 = make_local_sgd(loss0, optimizer, local_steps=1, batch_size=0)
  run0 = lambda key: local0(params, optimizer.init(params), key, data, 1.0, None, {})[0]
  np.testing.assert_array_equal(leaves(run0(jax.random.key(1))), leaves(run0(jax.random.key(2))))


def test_a_stateless_model_keeps_the_plain_state_and_call():
  exp = build_experiment(tiny_config(algorithm__name="dfedavg"))
  state = exp.algorithm.init(exp.init_params)
  assert type(state) is GossipState and exp.model_state is None
  for norm_model in ("vgg11", "resnet18"):  # GroupNorm: no train argument, no statistics
    model = make_model(norm_model, 10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert set(variables) == {"params"}


@pytest.mark.parametrize("algorithm", ["gossip", "modest", "choco", "push_sum",
                                       "gradient_tracking", "exact_diffusion", "qgm"])
def test_algorithms_that_do_not_carry_state_refuse_a_stateful_model(algorithm):
  config = _config(algorithm__name=algorithm)
  if algorithm in ("exact_diffusion", "qgm"):
    config.algorithm.local_steps = None
  with pytest.raises(UserError, match=rf"model.name='{INPUT_BN}' has state \(batch_stats\), "
                                      rf"which algorithm.name='{algorithm}' does not carry"):
    build_experiment(config)


@pytest.mark.parametrize("overrides,message", [
    (dict(model__norm="batch"), r"model.norm='batch' is for model.name in \['resnet18', "
                                r"'vgg11'\]; model.name='mlp' has no normalisation layer"),
    (dict(model__norm="layer"), r"Unknown model.norm='layer'"),
    (dict(model__name="vgg11", model__norm="batch", algorithm__name="gossip"),
     r"model.norm='batch' gives model.name='vgg11' BatchNorm statistics, which "
     r"algorithm.name='gossip' does not carry"),
    (dict(eval__recompute_stats_batches=-1), r"eval.recompute_stats_batches must be an integer"),
])
def test_bad_model_state_fields_are_refused_by_the_config_check(overrides, message):
  with pytest.raises(UserError, match=message):
    validate_config(tiny_config(**overrides))


def test_state_fields_on_a_stateless_model_are_refused():
  for overrides in (dict(model__average_stats=False), dict(eval__recompute_stats_batches=2)):
    with pytest.raises(UserError, match="are for models with state"):
      build_experiment(tiny_config(**overrides))


def test_batch_norm_cifar_models_are_stateful_and_mask_the_padding_lanes():
  for name in ("vgg11", "resnet18"):
    group, batch = make_model(name, 10), make_model(name, 10, norm="batch")
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    vg = jax.eval_shape(lambda: group.init(jax.random.key(0), x[:1]))
    vb = jax.eval_shape(lambda: batch.init(jax.random.key(0), x[:1], train=False))
    count = lambda tree: sum(np.prod(a.shape) for a in jax.tree.leaves(tree))
    assert count(vg["params"]) == count(vb["params"]) and "batch_stats" in vb
  # The lane mask keeps padding out of the statistics: a batch padded with garbage lanes gives
  # the statistics of its valid lanes (small VGG on 8x8 inputs).
  from dfl.models_cifar import VGGBatchNorm
  model = VGGBatchNorm(layers=(8, "M", 8), num_classes=3)
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 3))
  variables = model.init(jax.random.key(2), x[:1], train=False)
  stats = lambda xb, mask: model.apply(variables, xb, train=True, mask=mask,
                                       mutable=["batch_stats"])[1]["batch_stats"]
  padded = jnp.concatenate([x[:4], 100.0 + x[4:]])
  mask = jnp.arange(6) < 4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               stats(padded, mask), stats(x[:4], None))
