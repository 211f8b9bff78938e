"""The `system` section: spec forms, their errors, traces, and the config checks."""
import math

import numpy as np
import pytest

from dfl.config_checks import validate_config
from dfl.errors import UserError
from dfl.system import model as system_model
from dfl.system import traces
from tests.conftest import REPO, tiny_config


def test_constant_uniform_lognormal_values():
  const = system_model.sample_spec(system_model.parse_spec("samples_per_second", "250"),
                                   "samples_per_second", 5, seed=0)
  assert const.tolist() == [250.0] * 5
  uni = system_model.sample_spec(system_model.parse_spec("samples_per_second", "uniform:50,200"),
                                 "samples_per_second", 2000, seed=0)
  assert uni.min() >= 50 and uni.max() <= 200 and abs(uni.mean() - 125) < 3
  logn = system_model.sample_spec(
      system_model.parse_spec("samples_per_second", "lognormal:mean=100,sigma=0.5"),
      "samples_per_second", 20000, seed=1)
  assert abs(logn.mean() - 100) < 1.5  # the mean, not the median (exp(mu) = 100 e^{-1/8} = 88)
  assert abs(np.median(logn) - 100 * math.exp(-0.125)) < 1.5
  assert abs(np.std(np.log(logn)) - 0.5) < 0.01


def test_fields_draw_from_separate_streams():
  a = system_model.sample_spec(system_model.parse_spec("x", "uniform:1,2"), "samples_per_second",
                               8, seed=3)
  b = system_model.sample_spec(system_model.parse_spec("x", "uniform:1,2"),
                               "bandwidth_bytes_per_second", 8, seed=3)
  again = system_model.sample_spec(system_model.parse_spec("x", "uniform:1,2"),
                                   "samples_per_second", 8, seed=3)
  assert not np.allclose(a, b) and np.array_equal(a, again)


@pytest.mark.parametrize("spec, why", [
    ("fast", "not a number"), ("-3", "must be > 0"), ("uniform:5", "two numbers"),
    ("uniform:9,2", "HIGH >= LOW"), ("lognormal:mean=10", "mean=M,sigma=S"),
    ("lognormal:mu=1,sigma=1", "mean=M,sigma=S"), ("gamma:1,2", "unknown form 'gamma'"),
    ("", "non-empty"), ("trace:", "needs a file path"), ("inf", "finite")])
def test_bad_specs_name_field_value_and_forms(spec, why):
  with pytest.raises(UserError) as e:
    system_model.parse_spec("samples_per_second", spec)
  message = str(e.value)
  assert f"system.samples_per_second={spec!r}" in message and why in message
  assert "uniform:LOW,HIGH" in message and "trace:PATH.csv" in message


def test_latency_may_be_zero_speed_may_not():
  assert system_model.parse_spec("latency_seconds", "0", allow_zero=True).args == (0.0,)
  with pytest.raises(UserError, match="must be > 0"):
    system_model.parse_spec("samples_per_second", "0")


def test_trace_reader_columns_order_and_cycling(tmp_path):
  path = tmp_path / "t.csv"
  path.write_text("# two devices, listed out of order\n"
                  "device,samples_per_second,latency_seconds\n"
                  "7,300,0.2\n"
                  "2,100,0.1\n")
  assert traces.trace_column(str(path), "samples_per_second", 5).tolist() == [100, 300, 100,
                                                                              300, 100]
  assert traces.trace_column(str(path), "latency_seconds", 2).tolist() == [0.1, 0.2]
  with pytest.raises(UserError, match="no column 'bandwidth_bytes_per_second'"):
    traces.trace_column(str(path), "bandwidth_bytes_per_second", 2)
  bad = tmp_path / "bad.csv"
  bad.write_text("device,samples_per_second\n0,fast\n")
  with pytest.raises(UserError, match="data row 1, column 'samples_per_second': 'fast'"):
    traces.read_trace(str(bad))
  with pytest.raises(UserError, match="unknown columns"):
    (tmp_path / "u.csv").write_text("device,flops\n0,1\n")
    traces.read_trace(str(tmp_path / "u.csv"))


def test_bundled_trace_reads_from_the_repository_root():
  table = traces.read_trace("experiments/traces/devices.csv")
  assert set(table) == set(traces.COLUMNS) and len(table["samples_per_second"]) >= 16
  assert (REPO / "experiments/traces/make_device_trace.py").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"system__deadline_seconds": 1.0}, "system.deadline_seconds=1.0 is only used with "
                                         "system.enabled=True"),
    ({"system__enabled": True, "system__samples_per_second": "uniform:3"},
     "system.samples_per_second='uniform:3'"),
    ({"system__enabled": True, "system__deadline_seconds": 1.0, "algorithm__name": "modest"},
     "not algorithm.name='modest'"),
    ({"system__enabled": True, "system__late_updates": "later"}, "system.late_updates='later'"),
    ({"system__enabled": True, "system__tick_seconds": 1.0}, "only used by algorithm.name="
                                                             "'async_gossip'"),
    ({"algorithm__interval_jitter": 0.2}, "only used by algorithm.name='async_gossip'"),
    ({"system__enabled": True, "system__late_updates": "stale"}, "only acts with a round "
                                                                 "deadline"),
    ({"system__enabled": True, "system__compute_jitter": 0.3, "algorithm__name": "async_gossip"},
     "use algorithm.interval_jitter"),
    ({"system__enabled": True, "system__compute_jitter": -1.0}, "system.compute_jitter must be"),
    ({"system__enabled": True, "system__deadline_seconds": 1.0, "algorithm__name": "dfedsam_mgs"},
     "not algorithm.name='dfedsam_mgs'"),
])
def test_config_errors(overrides, message):
  with pytest.raises(UserError) as e:
    validate_config(tiny_config(**overrides))
  assert message in str(e.value)
