"""Metric writers: metrics.jsonl, and TensorBoard events (tensorboardX) when config.logging asks."""
import glob
import json
import struct

import pytest

from dfl.metric_writers import make_metric_writer
from dfl.train import train_and_evaluate
from tests.conftest import tiny_config


def read_scalars(logdir) -> dict:
  """{(tag, step): value} from the TFRecord-framed event files (no TensorFlow needed)."""
  event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
  scalars = {}
  for path in glob.glob(f"{logdir}/events.out.tfevents.*"):
    data, i = open(path, "rb").read(), 0
    while i < len(data):
      (length,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
      i += 12 + length + 4  # length, its crc, payload, payload crc
      for value in event.summary.value:
        scalars[(value.tag, event.step)] = value.simple_value
  return scalars


def test_run_with_tensorboard_logs_every_metrics_record(tmp_path):
  pytest.importorskip("tensorboardX")
  train_and_evaluate(tiny_config(logging__tensorboard=True), str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  scalars = read_scalars(tmp_path / "tensorboard")
  assert [r["round"] for r in records] == [0, 2, 4]
  for r in records:
    for key in ("test_accuracy", "consensus_distance", "comm_bytes"):
      assert scalars[(key, r["round"])] == pytest.approx(r[key], rel=1e-6)
  assert ("train_loss", 0) not in scalars  # None before any training is not a number


def test_without_tensorboard_only_jsonl(tmp_path):
  with make_metric_writer(str(tmp_path)) as writer:
    writer.write({"round": 0, "test_accuracy": 0.5})
    writer.write({"round": 3, "test_accuracy": 0.75})
  assert [json.loads(l) for l in open(tmp_path / "metrics.jsonl")] == [
      {"round": 0, "test_accuracy": 0.5}, {"round": 3, "test_accuracy": 0.75}]
  assert not (tmp_path / "tensorboard").exists()


def read_scalars_as_tensorboard(logdir) -> dict:
  """Like read_scalars, files in write order, applying TensorBoard's rule for a restart: a
  SessionLog START at step s hides every earlier event at a step >= s."""
  event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
  events = []
  for path in glob.glob(f"{logdir}/events.out.tfevents.*"):
    data, i = open(path, "rb").read(), 0
    while i < len(data):
      (length,) = struct.unpack("<Q", data[i:i + 8])
      events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + length]))
      i += 12 + length + 4
  scalars = {}  # (tag, step) -> every value shown, in order
  for event in sorted(events, key=lambda e: e.wall_time):
    if event.HasField("session_log") and event.session_log.status == event.session_log.START:
      scalars = {k: v for k, v in scalars.items() if k[1] < event.step}
    for value in event.summary.value:
      scalars.setdefault((value.tag, event.step), []).append(round(value.simple_value, 6))
  return scalars


def test_resumed_run_purges_the_tensorboard_rounds_it_replays(tmp_path):
  pytest.importorskip("tensorboardX")
  with make_metric_writer(str(tmp_path), tensorboard=True) as writer:  # killed after round 6
    for step in (0, 2, 4, 6):
      writer.write({"round": step, "test_accuracy": 0.1 * step})
  with make_metric_writer(str(tmp_path), tensorboard=True, mode="a", resume_round=4) as writer:
    for step in (4, 6, 8):  # replayed from the round-4 checkpoint, with other values
      writer.write({"round": step, "test_accuracy": 0.5 + 0.01 * step})
  # One value per round, the resumed run's for the replayed rounds; without the purge rounds 4
  # and 6 would show two values each.
  assert read_scalars_as_tensorboard(tmp_path / "tensorboard") == {
      ("test_accuracy", 0): [0.0], ("test_accuracy", 2): [0.2], ("test_accuracy", 4): [0.54],
      ("test_accuracy", 6): [0.56], ("test_accuracy", 8): [0.58]}
