"""Checkpoint contents, config checks on resume, corrupted checkpoints, divergence (in process)."""
import json
import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from dfl import checkpoint
from dfl.config_checks import validate_config
from dfl.train import train_and_evaluate
from tests.conftest import tiny_config


def tiny(**overrides):
  """tiny_config with a checkpoint at every chunk end (every 2 rounds)."""
  return tiny_config(**{"checkpoint__every_rounds": 2, **overrides})


def checkpoint_rounds(workdir) -> list[int]:
  directory = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  return sorted(int(s) for s in os.listdir(directory) if s.isdigit())


def metric_rounds(workdir) -> list[int]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["round"] for line in f]


def without_wall(summary: dict) -> dict:
  return {k: v for k, v in summary.items() if k != "wall_seconds"}


def truncate_files(directory) -> int:
  count = 0
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)
      count += 1
  return count


class KeyedState(NamedTuple):
  """A state shaped like what algorithms with sampling carry: keys, masks, empty optax states."""
  params: dict
  opt_state: object
  keys: jax.Array
  member_N: jax.Array


def test_state_with_typed_keys_round_trips_exactly(tmp_path):
  params = {"w": jnp.arange(12.0).reshape(4, 3), "b": jnp.full((4,), 0.5, jnp.bfloat16)}
  state = KeyedState(params, jax.vmap(optax.sgd(0.1).init)(params),
                     jax.random.split(jax.random.key(7), 4), jnp.array([1, 0, 1, 1], jnp.int32))
  saver = checkpoint.RunCheckpoints(str(tmp_path), max_to_keep=2, async_save=True)
  saver.save(3, state, {"note": "x"})
  saver.close()

  like = jax.tree.map(jnp.zeros_like, state)._replace(
      keys=jax.random.split(jax.random.key(0), 4))
  loader = checkpoint.RunCheckpoints(str(tmp_path), max_to_keep=2, async_save=True)
  restored = loader.restore(like, check_meta=lambda meta: None)
  loader.close()
  assert restored.round == 3 and restored.meta["note"] == "x"
  assert isinstance(restored.state, KeyedState)
  assert jax.dtypes.issubdtype(restored.state.keys.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(restored.state.keys),
                                jax.random.key_data(state.keys))
  np.testing.assert_array_equal(restored.state.member_N, state.member_N)
  assert restored.state.params["b"].dtype == jnp.bfloat16
  jax.tree.map(np.testing.assert_array_equal, restored.state.params, state.params)
  # Fresh keys derived from the restored ones match: the key impl survived the round trip.
  np.testing.assert_array_equal(
      jax.random.uniform(jax.random.fold_in(restored.state.keys[2], 5)),
      jax.random.uniform(jax.random.fold_in(state.keys[2], 5)))


def test_nonfinite_nodes_names_exactly_the_bad_nodes():
  state = KeyedState({"w": jnp.zeros((5, 3)), "b": jnp.zeros((5, 2, 2))}, (),
                     jax.random.split(jax.random.key(0), 5), jnp.zeros(5, jnp.int32))
  assert checkpoint.nonfinite_nodes(state) == []
  state.params["w"] = state.params["w"].at[3, 1].set(jnp.nan)
  state.params["b"] = state.params["b"].at[0, 1, 0].set(-jnp.inf)
  assert checkpoint.nonfinite_nodes(state) == [0, 3]


def test_state_checksum_sees_a_single_changed_value():
  state = {"w": jnp.arange(6.0).reshape(2, 3), "k": jax.random.split(jax.random.key(1), 2)}
  moved = {**state, "w": state["w"].at[1, 2].set(jnp.nextafter(5.0, 6.0))}
  swapped = {**state, "w": state["w"][::-1]}
  copied = jax.tree.map(jnp.copy, state)
  assert checkpoint.state_checksum(copied) == checkpoint.state_checksum(state)
  assert checkpoint.state_checksum(moved) != checkpoint.state_checksum(state)
  assert checkpoint.state_checksum(swapped) != checkpoint.state_checksum(state)


def test_checkpoint_settings_are_validated():
  with pytest.raises(ValueError, match=r"checkpoint.every_rounds must be an integer >= 0.*-1"):
    validate_config(tiny(checkpoint__every_rounds=-1))
  with pytest.raises(ValueError, match="checkpoint.max_to_keep"):
    validate_config(tiny(checkpoint__max_to_keep=0))


def test_checkpoints_fall_on_chunk_ends_that_reach_or_pass_a_multiple(tmp_path):
  config = tiny(train__rounds=9, eval__every_rounds=2, checkpoint__every_rounds=3,
                       checkpoint__max_to_keep=10)
  train_and_evaluate(config, str(tmp_path))
  # Chunks end at 2, 4, 6, 8, 9: the one ending at 4 passes 3, 6 reaches 6, 9 is the last.
  assert checkpoint_rounds(tmp_path) == [4, 6, 9]
  assert metric_rounds(tmp_path) == [0, 2, 4, 6, 8, 9]


def test_rewind_metrics_drops_rounds_past_the_checkpoint_and_torn_lines(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"round": r, "v": r}) for r in (0, 2, 4, 6)]
  path.write_text("\n".join(lines) + '\n{"round": 8, "v"')
  kept = checkpoint.rewind_metrics(str(path), 4, {"round": 4, "v": 4})
  assert [r["round"] for r in kept] == [0, 2, 4]
  assert [json.loads(line) for line in path.read_text().splitlines()] == kept
  # A file that lost the checkpoint's own line gets it back from the checkpoint.
  path.write_text(lines[0] + "\n")
  assert [r["round"] for r in checkpoint.rewind_metrics(str(path), 4, {"round": 4})] == [0, 4]


def test_config_mismatch_lists_fields_harmless_changes_resume_fresh_starts_over(tmp_path,
                                                                              capsys):
  workdir = str(tmp_path)
  train_and_evaluate(tiny(), workdir)
  with pytest.raises(checkpoint.ConfigMismatchError) as error:
    train_and_evaluate(tiny(algorithm__lr=0.2, model__hidden=(8,), train__rounds=6),
                       workdir)
  message = str(error.value)
  assert "algorithm.lr: 0.1 -> 0.2" in message and "model.hidden: [16] -> [8]" in message
  assert "train.rounds" not in message  # allowed, so not among the blocking fields
  assert "--config.checkpoint.fresh=True" in message
  assert checkpoint_rounds(workdir) == [2, 4]  # nothing touched

  capsys.readouterr()
  train_and_evaluate(tiny(train__rounds=6), workdir)
  err = capsys.readouterr().err
  assert "resuming from the checkpoint of round 4" in err
  assert "changed setting (allowed): train.rounds: 4 -> 6" in err
  assert metric_rounds(workdir) == [0, 2, 4, 6]

  train_and_evaluate(tiny(algorithm__lr=0.2, checkpoint__fresh=True), workdir)
  assert metric_rounds(workdir) == [0, 2, 4]
  assert checkpoint_rounds(workdir) == [2, 4]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["algorithm"]["lr"] == 0.2


def test_workdir_of_another_run_without_checkpoints_is_not_overwritten(tmp_path):
  (tmp_path / "config.json").write_text(tiny(data__alpha=0.1).to_json())
  (tmp_path / "metrics.jsonl").write_text('{"round": 0}\n')
  with pytest.raises(checkpoint.ConfigMismatchError, match=r"data.alpha: 0.1 -> 0.5"):
    train_and_evaluate(tiny(), str(tmp_path))
  assert (tmp_path / "metrics.jsonl").read_text() == '{"round": 0}\n'


# random_neighbors draws a new graph every round (replaying rounds needs W_t to be a function of
# (seed, t) alone); MoDeST's state has a [1, ...] round model beside the [N, ...] node models
# and its membership follows churn events.
@pytest.mark.parametrize("overrides", [
    {}, {"topology__name": "random_neighbors", "topology__degree": 2},
    {"algorithm__name": "modest", "algorithm__sample_size": 2,
     "algorithm__membership": "3:fail:0.5"}], ids=["ring", "random_neighbors", "modest"])
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, overrides):
  workdir = str(tmp_path)
  config = tiny(**overrides)
  first = train_and_evaluate(config, workdir)
  assert truncate_files(os.path.join(workdir, "checkpoints", "4")) > 0
  capsys.readouterr()
  second = train_and_evaluate(config, workdir)
  err = capsys.readouterr().err
  assert "checkpoint of round 4 is unreadable" in err and "resuming from round 2" in err
  assert without_wall(second) == without_wall(first)  # rounds 3-4 replayed exactly
  assert os.path.isdir(os.path.join(workdir, checkpoint.CORRUPT_DIR, "4"))  # kept to inspect
  assert checkpoint_rounds(workdir) == [2, 4]
  assert metric_rounds(workdir) == [0, 2, 4]


def test_no_readable_checkpoint_is_an_error_that_deletes_nothing(tmp_path):
  workdir = str(tmp_path)
  train_and_evaluate(tiny(), workdir)
  for r in (2, 4):
    truncate_files(os.path.join(workdir, "checkpoints", str(r)))
  with pytest.raises(RuntimeError, match=r"No checkpoint .* can be read back"):
    train_and_evaluate(tiny(), workdir)
  assert checkpoint_rounds(workdir) == [2, 4]


def test_divergence_names_round_and_nodes_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = tiny(algorithm__lr=1e10, train__rounds=6, eval__every_rounds=1,
                checkpoint__every_rounds=1)
  with pytest.raises(checkpoint.Diverged) as error:
    train_and_evaluate(config, workdir)
  message = str(error.value)
  found = re.search(r"non-finite in round (\d+).*nodes \[([\d, ]+)\]", message)
  assert found, message
  bad_round = int(found.group(1))
  saved = checkpoint_rounds(workdir)
  assert saved, f"precondition: lr=1e10 should diverge after round 1; got: {message}"
  assert max(saved) < bad_round and f"last good checkpoint (round {max(saved)}) is kept" in message
  assert max(metric_rounds(workdir)) < bad_round
  state = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(max(saved)), "state"))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def test_resume_across_a_final_merge_replays_it_and_its_horizon_is_fixed(tmp_path, capsys):
  # Chunks: 0-4, 4-5 (the merge round 5 starts a chunk), 5-6; checkpoints at 4, 5, 6.
  config = tiny(train__rounds=6, eval__every_rounds=4, checkpoint__every_rounds=1,
                topology__schedule="final_merge")
  reference = train_and_evaluate(config, str(tmp_path / "reference"))
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)
  assert checkpoint_rounds(workdir) == [4, 5, 6]
  for r in (5, 6):
    truncate_files(os.path.join(workdir, "checkpoints", str(r)))
  capsys.readouterr()
  resumed = train_and_evaluate(config, workdir)
  assert "resuming from round 4" in capsys.readouterr().err
  assert without_wall(resumed) == without_wall(reference)  # before_merge figures included
  assert resumed["merge_round"] == 5 and metric_rounds(workdir) == [0, 4, 5, 6]

  # Extending the run would move the final merge: refused, naming the horizon.
  with pytest.raises(checkpoint.ConfigMismatchError, match=r"topology.num_rounds: 6 -> 8"):
    train_and_evaluate(tiny(train__rounds=8, eval__every_rounds=4, checkpoint__every_rounds=1,
                            topology__schedule="final_merge"), workdir)


def test_a_field_added_later_compares_as_its_old_behaviour():
  from dfl.checkpoint import ConfigMismatchError, check_resumable
  saved = {"data": {"name": "digits"}, "eval": {"local_examples": 2000}}  # before both fields
  same = {"data": {"name": "digits", "min_samples": 0},
          "eval": {"local_examples": 2000, "local_subset": "shared"}}
  assert check_resumable(saved, same, what="the run") == []
  changed = {"data": {"name": "digits", "min_samples": 1},
             "eval": {"local_examples": 2000, "local_subset": "per_node"}}
  with pytest.raises(ConfigMismatchError) as e:
    check_resumable(saved, changed, what="the run")
  assert "data.min_samples: 0 -> 1" in str(e.value)
  assert "eval.local_subset: 'shared' -> 'per_node'" in str(e.value)
