"""A schedule's merge round is an exact average for every algorithm that accepts a schedule
(dense and sparse mixing forms); the algorithms that ignore the topology refuse a schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.algorithms import ALGORITHMS, STATIC_TOPOLOGY_ONLY, USES_TOPOLOGY
from dfl.algorithms.base import RoundInputs
from dfl.experiment import build_experiment, mixing_operator
from dfl.mixing import DenseMixing, SparseMixing
from tests.conftest import tiny_config

SCHEDULES = {"final_merge": {"topology__schedule": "final_merge"},
             "dense_window_at_1": {"topology__schedule": "dense_window",
                                   "topology__schedule_window": 2,
                                   "topology__schedule_start": 1.0}}


def _identity(mixing):
  """W = I in the form (and shape) of `mixing`: the round's models as they enter the gossip step."""
  if isinstance(mixing, DenseMixing):
    return DenseMixing(jnp.eye(mixing.W.shape[0], dtype=mixing.W.dtype))
  n, k = mixing.indices.shape
  return SparseMixing(jnp.broadcast_to(jnp.arange(n, dtype=mixing.indices.dtype)[:, None], (n, k)),
                      jnp.zeros((n, k), mixing.weights.dtype).at[:, 0].set(1))


def test_the_algorithms_refusing_a_schedule_are_those_without_a_topology():
  assert sorted(set(ALGORITHMS) - USES_TOPOLOGY) == ["fedavg", "fedsam", "modest"]
  # and CHOCO and asynchronous gossip, which keep their neighbours' models and need a fixed graph
  assert sorted(STATIC_TOPOLOGY_ONLY) == ["async_gossip", "choco"]


# Every algorithm x schedule on the dense form; the neighbour form for gossip learning (which
# rebuilds W itself, in both forms) and for one plain gossip algorithm (the mixing is shared).
CASES = ([(name, schedule, "dense") for name in sorted(ALGORITHMS) for schedule in sorted(SCHEDULES)]
         + [(name, schedule, "sparse") for name in ("dfedavg", "gossip")
            for schedule in sorted(SCHEDULES)])


@pytest.mark.parametrize("name, schedule, form", CASES)
def test_merge_round_is_the_exact_mean_of_the_models_entering_it(name, schedule, form):
  config = tiny_config(num_nodes=6, algorithm__name=name, topology__name="ring",
                       topology__mixing_form=form, train__rounds=4, **SCHEDULES[schedule])
  if name not in USES_TOPOLOGY or name in STATIC_TOPOLOGY_ONLY:
    with pytest.raises(ValueError, match=rf"topology.schedule='{config.topology.schedule}' .*"
                                         rf"algorithm.name='{name}'"):
      build_experiment(config)
    return
  exp = build_experiment(config)
  t = exp.topology.dense_rounds[0]
  assert t == (3 if schedule == "final_merge" else 1)
  mixing = mixing_operator(exp.topology, t, form == "sparse")
  assert isinstance(mixing, SparseMixing) == (form == "sparse")
  state = exp.algorithm.init(exp.init_params)
  round_fn = jax.jit(exp.algorithm.round)

  def run(m):
    inputs = RoundInputs(jnp.int32(t), jax.random.fold_in(exp.train_key, t), m, exp.data,
                         exp.train_key)
    return round_fn(state, inputs)[0].params

  entering, merged = run(_identity(mixing)), run(mixing)
  for x_in, x_out in zip(jax.tree.leaves(entering), jax.tree.leaves(merged)):
    x_in = np.asarray(x_in, np.float64)
    mean = x_in.sum(axis=0) / x_in.shape[0]
    assert np.abs(x_in - mean).max() > 1e-4  # the nodes did differ before the merge
    for i in range(x_in.shape[0]):
      np.testing.assert_allclose(x_out[i], mean, rtol=1e-5, atol=1e-6, err_msg=f"node {i}")


def test_gossip_keeps_its_own_rule_outside_the_merge_rounds():
  """Round 0 of the same run is not a merge: gossip learning mixes β = 0.5 with its neighbours."""
  config = tiny_config(num_nodes=6, algorithm__name="gossip", topology__name="ring",
                       topology__mixing_form="dense", train__rounds=4,
                       topology__schedule="final_merge")
  exp = build_experiment(config)
  state = exp.algorithm.init(exp.init_params)
  W = mixing_operator(exp.topology, 0, False)
  inputs = RoundInputs(jnp.int32(0), jax.random.fold_in(exp.train_key, 0), W, exp.data,
                       exp.train_key)
  entering = exp.algorithm.round(state, inputs._replace(mixing=_identity(W)))[0].params
  mixed = exp.algorithm.round(state, inputs)[0].params
  for x_in, x_out in zip(jax.tree.leaves(entering), jax.tree.leaves(mixed)):
    x_in = np.asarray(x_in, np.float64)
    n = x_in.shape[0]
    expected = [0.5 * x_in[i] + 0.25 * (x_in[(i - 1) % n] + x_in[(i + 1) % n]) for i in range(n)]
    np.testing.assert_allclose(x_out, np.stack(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("override, message", [
    ({"topology__schedule_start": 3.0}, "topology.schedule_start=3.0 places a dense window, but "
                                        "topology.schedule='none'"),
    ({"topology__schedule": "final_merge", "topology__schedule_start": 0.5},
     "topology.schedule_start=0.5 places a dense window, but topology.schedule='final_merge'"),
    ({"topology__schedule": "final_merge", "variance_correction__enabled": True},
     "topology.schedule='final_merge' with variance_correction.enabled=True"),
    ({"topology__schedule": "dense_window", "algorithm__name": "modest"},
     "topology.schedule='dense_window' changes the communication graph, which "
     "algorithm.name='modest' does not use"),
])
def test_schedule_fields_without_a_use_are_errors(override, message):
  from dfl.config_checks import validate_config
  with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
    validate_config(tiny_config(**override))
