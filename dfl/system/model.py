"""The system model: how fast each simulated node computes and sends (config section `system`).

Per node i, three figures, each given by a compact spec string:

    system.samples_per_second          s_i   training samples processed per second
    system.bandwidth_bytes_per_second  b_i   the node's uplink
    system.latency_seconds             l_i   paid once per round in which the node sends

Spec forms (`parse_spec`):

    "100"                          every node 100 (any float literal: "1.25e6")
    "uniform:50,200"               U(50, 200), one draw per node
    "lognormal:mean=100,sigma=0.5" log-normal with that mean (not median) and log-stddev sigma:
                                   exp(mu + sigma z), mu = ln(mean) - sigma^2 / 2
    "trace:PATH.csv"               the column of that name in a device trace (dfl/system/traces.py)

Draws are seeded by `system.seed` (None: derived from the run's seed), one independent stream per
field, so changing one field's spec never moves another's values. Values are fixed for the run;
`system.compute_jitter` = sigma > 0 adds per-round variation: in round t node i's compute time
is multiplied by exp(sigma z - sigma^2 / 2) (mean 1), z ~ N(0, 1) drawn from the round's key
(`compute_factors`, the same numbers on device for the deadline and on the host for the clock),
so who is slow changes from round to round.

The server of fedavg/fedsam has its own uplink `system.server_bandwidth_bytes_per_second` and
latency `system.server_latency_seconds` (plain numbers). `system.deadline_seconds` > 0 sets a
round deadline (dfl/system/deadline.py), `system.late_updates` what happens to late updates
(drop | stale), `system.tick_seconds` the tick of async_gossip (0: the fastest node's period),
`system.availability` which nodes are online per round (dfl/system/availability.py; "none").

With `system.enabled=False` (the default) none of this is built and every other field must keep
its default.

Work per round (`samples_per_round`): the samples a node's local phase reads, counted exactly
from the batch stream of dfl/local.py: K steps of batch B over a shard of n samples, cut in
ceil(n / B) batches per epoch (the last one short), read (K // nb) * n + (K % nb) * B samples;
E local epochs read E * n; full batches (B = 0) K * n. SAM algorithms (dfedsam, dfedsam_mgs,
fedsam) take two gradients per sample, counted twice.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dfl.errors import UserError
from dfl.system import availability as availability_lib
from dfl.system import traces

NODE_FIELDS = ("samples_per_second", "bandwidth_bytes_per_second", "latency_seconds")
LATE_UPDATES = ("drop", "stale")
SPEC_FORMS = ('a number ("100")', '"uniform:LOW,HIGH"', '"lognormal:mean=M,sigma=S"',
              '"trace:PATH.csv"')
# Defaults of the section (dfl.config_checks refuses changed ones while system.enabled=False).
DEFAULTS = {"samples_per_second": "1000", "bandwidth_bytes_per_second": "1250000",
            "latency_seconds": "0.05", "server_bandwidth_bytes_per_second": 125e6,
            "server_latency_seconds": 0.05, "deadline_seconds": 0.0, "late_updates": "drop",
            "tick_seconds": 0.0, "compute_jitter": 0.0, "availability": "none", "seed": None}
SAM_ALGORITHMS = {"dfedsam", "dfedsam_mgs", "fedsam"}
_STREAMS = {name: i for i, name in enumerate(NODE_FIELDS)}
JITTER_STREAM = 2**31 - 9  # fold_in tag of the per-round compute factors, apart from node keys


def compute_factors(round_key: jax.Array, num_nodes: int, sigma: float) -> jax.Array:
  """[N] float32 per-round compute-time factors exp(sigma z - sigma^2 / 2), z ~ N(0, 1) from
  fold_in(round_key, JITTER_STREAM); round_key = fold_in(train_key, t) as in the engine."""
  z = jax.random.normal(jax.random.fold_in(round_key, JITTER_STREAM), (num_nodes,), jnp.float32)
  return jnp.exp(jnp.float32(sigma) * z - jnp.float32(sigma * sigma / 2))


@dataclasses.dataclass(frozen=True)
class Spec:
  kind: str  # constant | uniform | lognormal | trace
  args: tuple  # (value,) | (low, high) | (mean, sigma) | (path,)


def _bad(field: str, spec, why: str) -> UserError:
  return UserError(f"system.{field}={spec!r}: {why}; valid forms: {', '.join(SPEC_FORMS)}.")


def parse_spec(field: str, spec, *, allow_zero: bool = False) -> Spec:
  """Parses one spec string (or number); raises UserError naming the field, value and forms."""
  low_word = ">= 0" if allow_zero else "> 0"
  positive = (lambda v: v >= 0) if allow_zero else (lambda v: v > 0)

  def number(text: str, what: str) -> float:
    try:
      v = float(text)
    except (TypeError, ValueError):
      raise _bad(field, spec, f"{what} {text!r} is not a number") from None
    if not math.isfinite(v):
      raise _bad(field, spec, f"{what} must be finite")
    return v

  if isinstance(spec, (int, float)) and not isinstance(spec, bool):
    spec = repr(float(spec))
  if not isinstance(spec, str) or not spec.strip():
    raise _bad(field, spec, "expected a non-empty string")
  text = spec.strip()
  kind, _, rest = text.partition(":")
  kind = kind.strip()
  if not rest and ":" not in text:
    v = number(text, "the value")
    if not positive(v):
      raise _bad(field, spec, f"the value must be {low_word}")
    return Spec("constant", (v,))
  if kind == "trace":
    if not rest.strip():
      raise _bad(field, spec, "trace: needs a file path")
    return Spec("trace", (rest.strip(),))
  if kind == "uniform":
    parts = [p.strip() for p in rest.split(",")]
    if len(parts) != 2:
      raise _bad(field, spec, "uniform takes two numbers LOW,HIGH")
    low, high = number(parts[0], "LOW"), number(parts[1], "HIGH")
    if not (positive(low) and high >= low):
      raise _bad(field, spec, f"uniform needs {low_word.replace('>', 'LOW >')} and HIGH >= LOW")
    return Spec("uniform", (low, high))
  if kind == "lognormal":
    kwargs = {}
    for part in rest.split(","):
      key, eq, value = part.partition("=")
      if not eq or key.strip() not in ("mean", "sigma") or key.strip() in kwargs:
        raise _bad(field, spec, "lognormal takes mean=M,sigma=S")
      kwargs[key.strip()] = number(value.strip(), key.strip())
    if set(kwargs) != {"mean", "sigma"}:
      raise _bad(field, spec, "lognormal takes mean=M,sigma=S")
    if not (kwargs["mean"] > 0 and kwargs["sigma"] >= 0):
      raise _bad(field, spec, "lognormal needs mean > 0 and sigma >= 0")
    return Spec("lognormal", (kwargs["mean"], kwargs["sigma"]))
  raise _bad(field, spec, f"unknown form {kind!r}")


def sample_spec(spec: Spec, field: str, num_nodes: int, seed: int) -> np.ndarray:
  """[num_nodes] float64 values of a parsed spec (seeded per field)."""
  rng = np.random.default_rng([seed, _STREAMS.get(field, 99)])
  if spec.kind == "constant":
    return np.full(num_nodes, spec.args[0], np.float64)
  if spec.kind == "uniform":
    return rng.uniform(spec.args[0], spec.args[1], num_nodes)
  if spec.kind == "lognormal":
    mean, sigma = spec.args
    return np.exp(math.log(mean) - sigma ** 2 / 2 + sigma * rng.standard_normal(num_nodes))
  return traces.trace_column(spec.args[0], field, num_nodes)


@dataclasses.dataclass(frozen=True)
class SystemModel:
  """Per-node figures [N] (float64) and the run-wide settings of the `system` section."""
  samples_per_second_N: np.ndarray
  bandwidth_N: np.ndarray  # bytes per second
  latency_N: np.ndarray  # seconds
  server_bandwidth: float = DEFAULTS["server_bandwidth_bytes_per_second"]
  server_latency: float = DEFAULTS["server_latency_seconds"]
  deadline: float = 0.0  # 0: none
  late_updates: str = "drop"
  tick_seconds: float = 0.0  # async_gossip; 0: resolved by the experiment
  compute_jitter: float = 0.0  # sigma of the per-round log-normal compute factor; 0: none
  online_RxN: Optional[np.ndarray] = None  # [R, N] bool, system.availability; None: all online

  @property
  def num_nodes(self) -> int:
    return len(self.samples_per_second_N)


def check_section(system, num_nodes: int) -> None:
  """Validates the `system` section (None or disabled: every field at its default)."""
  if system is None:
    return
  if not isinstance(system.enabled, bool):
    raise UserError(f"system.enabled must be True or False, got {system.enabled!r}.")
  if not system.enabled:
    for field, default in DEFAULTS.items():
      value = system.get(field, default)
      if value != default:
        raise UserError(f"system.{field}={value!r} is only used with system.enabled=True; set "
                        f"system.enabled=True or leave it at {default!r}.")
    return
  for field in NODE_FIELDS:
    parse_spec(field, system[field], allow_zero=field == "latency_seconds")
  for field, zero_ok in (("server_bandwidth_bytes_per_second", False),
                         ("server_latency_seconds", True), ("deadline_seconds", True),
                         ("tick_seconds", True), ("compute_jitter", True)):
    v = system[field]
    if not (isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if zero_ok else v > 0)):
      raise UserError(f"system.{field} must be a finite number {'>= 0' if zero_ok else '> 0'}"
                      f"{' (0: none)' if field in ('deadline_seconds', 'tick_seconds') else ''}, "
                      f"got {v!r}.")
  if system.late_updates not in LATE_UPDATES:
    raise UserError(f"Unknown system.late_updates={system.late_updates!r}; valid: "
                    f"{list(LATE_UPDATES)} (drop: late models are left out; stale: their "
                    "round-start model is used instead).")
  availability_lib.parse_availability(system.get("availability", "none"))


def build_system(system, num_nodes: int, seed: int, rounds: int = 0) -> Optional[SystemModel]:
  """The SystemModel of a `system` section, or None when it is absent or disabled; `rounds`:
  the rows of the availability table (train.rounds)."""
  if system is None or not system.enabled:
    return None
  check_section(system, num_nodes)
  values = {}
  for field in NODE_FIELDS:
    spec = parse_spec(field, system[field], allow_zero=field == "latency_seconds")
    values[field] = sample_spec(spec, field, num_nodes, seed)
  return SystemModel(values["samples_per_second"], values["bandwidth_bytes_per_second"],
                     values["latency_seconds"],
                     server_bandwidth=float(system.server_bandwidth_bytes_per_second),
                     server_latency=float(system.server_latency_seconds),
                     deadline=float(system.deadline_seconds),
                     late_updates=str(system.late_updates),
                     tick_seconds=float(system.tick_seconds),
                     compute_jitter=float(system.compute_jitter),
                     online_RxN=availability_lib.availability_table(
                         system.get("availability", "none"), num_nodes, rounds, seed))


def samples_read(steps, shard_N, batch_size: int) -> np.ndarray:
  """Samples read by `steps` local steps of batch `batch_size` over shards of `shard_N` samples
  (the batch stream of dfl/local.py: epochs of ceil(n / B) batches, the last one short)."""
  n_N = np.asarray(shard_N, np.int64)
  steps_N = np.broadcast_to(np.asarray(steps, np.int64), n_N.shape)
  if batch_size == 0:
    return steps_N * n_N
  nb_N = -(-n_N // batch_size)
  return (steps_N // nb_N) * n_N + (steps_N % nb_N) * batch_size


def samples_per_round(algorithm_config, shard_sizes, default_steps: int) -> np.ndarray:
  """[N] samples node i's local phase reads in a round it trains (module docstring)."""
  a = algorithm_config
  n_N = np.asarray(shard_sizes, np.int64)
  if a.local_epochs:
    samples_N = a.local_epochs * n_N
  else:
    k = default_steps if a.local_steps is None else int(a.local_steps)
    samples_N = samples_read(k, n_N, int(a.batch_size))
  return samples_N * (2 if a.name in SAM_ALGORITHMS else 1)


def node_seconds(system: SystemModel, samples_N, sent_N, message_bytes: int,
                 exchanges: int = 1) -> np.ndarray:
  """T_i = samples_i / s_i + [sent_i > 0] (exchanges * l_i + sent_i * bytes / b_i): node i's
  local phase, then all its messages of the round over its uplink (float64)."""
  sent_N = np.asarray(sent_N, np.float64)
  comm_N = np.where(sent_N > 0, exchanges * system.latency_N
                    + sent_N * float(message_bytes) / system.bandwidth_N, 0.0)
  return np.asarray(samples_N, np.float64) / system.samples_per_second_N + comm_N
