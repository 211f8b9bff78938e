"""CHOCO-SGD and push-sum through the driver: a run stopped at round 2 and resumed (its state
holds the public copies x̂ / the push-sum weights, its counter the bytes) ends bit for bit
where an uninterrupted run ends."""
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dfl.train import train_and_evaluate
from tests.conftest import tiny_config

CASES = {"choco": dict(algorithm__name="choco", algorithm__compressor="random_k"),
         "push_sum": dict(algorithm__name="push_sum", topology__name="exponential",
                          topology__directed=True, topology__weights="column_uniform")}


def records(workdir):
  return [{k: v for k, v in json.loads(line).items() if k != "wall_seconds"}
          for line in open(workdir / "metrics.jsonl")]


@pytest.mark.parametrize("name", sorted(CASES))
def test_resumed_run_is_bit_identical(tmp_path, name):
  config = tiny_config(train__rounds=4, checkpoint__every_rounds=2, **CASES[name])
  train_and_evaluate(config, str(tmp_path / "whole"))
  config.train.rounds = 2
  train_and_evaluate(config, str(tmp_path / "resumed"))
  config.train.rounds = 4  # extending the run resumes from its checkpoint of round 2
  train_and_evaluate(config, str(tmp_path / "resumed"))
  assert records(tmp_path / "resumed") == records(tmp_path / "whole")
  states = [ocp.StandardCheckpointer().restore(tmp_path / run / "checkpoints" / "4" / "state")
            for run in ("whole", "resumed")]
  assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
  jax.tree.map(np.testing.assert_array_equal, *states)
