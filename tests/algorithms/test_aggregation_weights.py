"""Sample-count-weighted aggregation (algorithm.aggregation_weights='num_samples') for FedAvg and
gossip learning, against a numpy computation of the weighted means."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dfl.algorithms.base import RoundInputs
from dfl.algorithms.fedavg import server_average
from dfl.config_checks import validate_config
from dfl.experiment import build_experiment, mixing_operator
from dfl.local import NodeData
from dfl.mixing import DenseMixing, SparseMixing
from tests.conftest import tiny_config


def _marker_fedavg(n, sizes, client_fraction, weights):
  """A local update adding 2**k to client k's model: the aggregate shows who counted, how much."""
  def local_sgd(params, opt_state, key, shard, lr_scale, num_steps=None):
    return jax.tree.map(lambda p: p + 2.0 ** shard.indices[0], params), opt_state, 0.0
  algorithm = server_average(local_sgd, num_nodes=n, client_fraction=client_fraction,
                             optimizer=optax.sgd(0.1), aggregation_weights=weights)
  data = NodeData(jnp.zeros((1, 1)), jnp.zeros(1, jnp.int32),
                  jnp.arange(n, dtype=jnp.int32)[:, None], jnp.asarray(sizes, jnp.int32))
  return algorithm, data


@pytest.mark.parametrize("client_fraction", [1.0, 0.5])
@pytest.mark.parametrize("weights", ["uniform", "num_samples"])
def test_fedavg_weights_the_sampled_clients_by_their_sample_counts(weights, client_fraction):
  n, sizes = 6, np.array([5, 40, 7, 12, 100, 1])
  algorithm, data = _marker_fedavg(n, sizes, client_fraction, weights)
  state = algorithm.init({"w": jnp.full((n, 1), 3.0)})
  key = jax.random.key(4)
  for t in range(3):
    inputs = RoundInputs(jnp.int32(t), jax.random.fold_in(key, t), None, data, key)
    before = float(state.params["w"][0, 0])
    state, metrics = jax.jit(algorithm.round)(state, inputs)
    sampled = np.flatnonzero(np.asarray(metrics.sent_N))
    assert len(sampled) == round(client_fraction * n)
    marks = 2.0 ** sampled
    p = sizes[sampled] / sizes[sampled].sum() if weights == "num_samples" else 1 / len(sampled)
    expected = before + np.sum(p * marks)
    np.testing.assert_allclose(np.asarray(state.params["w"]), expected, rtol=1e-6)


@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_gossip_weights_the_received_models_by_their_sample_counts(form):
  beta = 0.3
  config = tiny_config(num_nodes=6, algorithm__name="gossip", topology__name="ring",
                       topology__mixing_form=form, algorithm__self_weight=beta,
                       algorithm__aggregation_weights="num_samples")
  exp = build_experiment(config)
  n_N = np.array([len(s) for s in exp.shards], np.float64)
  assert len(set(n_N)) > 2  # Dirichlet shards of unequal sizes
  mixing = mixing_operator(exp.topology, 0, form == "sparse")
  n, k = 6, 3
  identity = (DenseMixing(jnp.eye(n)) if form == "dense" else
              SparseMixing(jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, k)),
                           jnp.zeros((n, k)).at[:, 0].set(1)))
  state = exp.algorithm.init(exp.init_params)
  inputs = RoundInputs(jnp.int32(0), jax.random.fold_in(exp.train_key, 0), mixing, exp.data,
                       exp.train_key)
  entering = exp.algorithm.round(state, inputs._replace(mixing=identity))[0].params
  mixed, metrics = exp.algorithm.round(state, inputs)
  for y, out in zip(jax.tree.leaves(entering), jax.tree.leaves(mixed.params)):
    y = np.asarray(y, np.float64)
    for i in range(n):
      left, right = (i - 1) % n, (i + 1) % n
      received = (n_N[left] * y[left] + n_N[right] * y[right]) / (n_N[left] + n_N[right])
      np.testing.assert_allclose(out[i], beta * y[i] + (1 - beta) * received,
                                 rtol=2e-5, atol=1e-6, err_msg=f"node {i}")
  assert int(metrics.transfers) == 2 * n  # weighting changes no message


def test_fedavg_num_samples_builds_and_other_algorithms_refuse_it():
  exp = build_experiment(tiny_config(algorithm__name="fedavg", algorithm__client_fraction=1.0,
                                     algorithm__aggregation_weights="num_samples"))
  assert exp.algorithm is not None
  for name in ("dfedavg", "dpsgd", "modest", "fedsam"):
    with pytest.raises(ValueError, match=rf"algorithm.aggregation_weights='num_samples' is only "
                                         rf"used by \['fedavg', 'gossip'\], not algorithm.name="
                                         rf"'{name}'"):
      validate_config(tiny_config(algorithm__name=name,
                                  algorithm__aggregation_weights="num_samples"))
  with pytest.raises(ValueError, match=r"Unknown algorithm.aggregation_weights='sizes'; valid: "
                                       r"\['num_samples', 'uniform'\]"):
    validate_config(tiny_config(algorithm__name="fedavg", algorithm__aggregation_weights="sizes"))
