"""MoDeST (de Vos, Dhasade, Kermarrec, Lavoie, Pouwelse, Sharma, "MoDeST: Bridging the Gap
between Federated and Decentralized Learning with Decentralized Sampling", arXiv 2302.13837).

No server: for every round k each node can compute the same candidate list L_k, a pseudo-random
order of the nodes it believes active, from (seed, k) alone. Round k:

  1. The sample S_k = the first s responsive nodes of L_k. Each participant starts from the
     model x^k it received and runs K local SGD steps, giving y_j.
  2. Each participant sends y_j to the aggregators A_k = the first a responsive nodes of L_{k+1}
     (hence A_k = the first a nodes of S_{k+1}).
  3. An aggregator averages uniformly the first floor(sf * s) models to arrive (at least one),
     x^{k+1} = mean_j y_j; if fewer arrive (failures), it waits for its timeout and averages those
     that did if they are at least `min_models` (3), else the round is void: x^{k+1} = x^k (the
     aggregators forward the round's starting model; a deployment would fetch it from the
     previous aggregators).
  4. The aggregators send x^{k+1} to the s nodes of S_{k+1}, which train in round k + 1.

Nodes outside S_k and A_k neither train nor communicate. A node that fails stays in the candidate
lists (nobody was told) and is probed in vain until it has been silent for `inactivity_rounds`
(50) rounds: failing at round f, it last answered in round f - 1 and is dropped from L_{f+R} on.

Reference: github.com/devos50/decentralized-learning, accdfl/dfl/community.py
(`has_enough_trained_models`: len >= floor(sample_size * success_fraction);
`has_enough_trained_models_for_liveness`: >= 3 models on `on_aggregation_timeout`, else the
aggregation is dropped), accdfl/core/peer_manager.py (`get_active_peers(round)`: peers last
active at or after round - inactivity_threshold), accdfl/core/session_settings.py (DFLSettings
defaults: success_fraction 1, inactivity_threshold 50), accdfl/dfl/sample_manager.py (the
candidate list: peers ordered by md5(peer, round)).

Symbols -> names: s = sample_size, a = aggregators, sf = success_fraction, K = local_steps,
R = inactivity_rounds
(or local epochs: per-node num_steps_N),
L_k = `candidate_list(run_key, k)` (a permutation of all node ids; nodes not listed at round k
are skipped), S_k and A_k = `first_qualifying(...)`; membership (join/leave/fail) =
`dfl.membership.Membership`.

Simulation conventions (the paper's protocol runs asynchronously; this is its round-synchronous
form):
  * L_k is `permutation(fold_in(fold_in(run_key, k), SAMPLING_STREAM))`, the stream FedAvg's
    server samples from: without churn, S_k is FedAvg's sample, and with a = 1, sf = 1 MoDeST
    computes exactly FedAvg with C = s / N (bit for bit), only its communication differs.
  * S_k is chosen at the end of round k - 1, so a participant that fails at round k is still in
    S_k and its model never arrives; from round k + 1 it is skipped. A node joining at round r is
    listed (eligible) from round r + 1; a node leaving at round r is not listed from round r.
  * Arrival order at the aggregators is a random order of the participants (one order shared by
    the a aggregators: a slow participant is slow for all), so with sf < 1 a random
    floor(sf * s) of the delivered models count; the others were sent (and are counted) but
    dropped.
  * A void round (fewer than floor(sf * s) and fewer than `min_models` models arrived) keeps
    x^{k+1} = x^k and the next sample starts from it; the aggregators' downloads are still counted.
    In the reference the dropped aggregation sends nothing and, with a = 1, the protocol stalls.
  * Inactivity: "last heard from" is the last round a node answered, as if every node's silence
    were seen by all (the reference merges population views carried with the models). The
    reference also measures it for live nodes (the last message received from them), so there a
    live node nobody contacted for 50 rounds drops out too; here only failed nodes are dropped.
    The reference's simulation script (simulations/dfl/dfl_simulation.py) overrides the
    threshold to 1000; 50 is its library default.
  * Communication per round: every delivered participant sends its model to each aggregator and
    each aggregator sends x^{k+1} to the nodes of S_{k+1}: 2 * s * a model transfers, less the
    deliveries a node would make to itself (an aggregator is in S_{k+1}, and may be in S_k).
    Control messages (counted apart): to find the first responsive candidates of L_{k+1}, each
    delivering participant probes them in list order up to the a-th that answers, and each
    aggregator up to the s-th; one probe per candidate examined, one reply per answer.

State and evaluation: `node_params` keeps the node axis, each row the model that node last held
(trained or received); `round_model` is x^k, the one model the protocol agrees on. `params`, the
view the evaluator reads, is x^k on every row, so `test_accuracy` is the accuracy of the current
round model (as for FedAvg) and the consensus distance is 0.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dfl.algorithms import common, registry
from dfl.algorithms.base import Algorithm, RoundInputs, RoundMetrics, node_keys
from dfl.algorithms.fedavg import SAMPLING_STREAM
from dfl.execution import node_map
from dfl.hyperparameters import Hyperparameter, require
from dfl.local import NodeData, make_local_sgd, make_optimizer
from dfl.membership import Membership, build_membership, parse_schedule, static_membership
from dfl.tracing import concrete

PyTree = object
ARRIVAL_STREAM = 2**31 - 2  # fold_in tag of the arrival order at the aggregators


class ModestState(NamedTuple):
  node_params: PyTree  # [N, ...] the model each node last held
  # [1, ...] x^k, the last aggregate (what the sample of round k starts from); its node axis of
  # length 1 broadcasts against node_params under any leading axes (e.g. batched seeds).
  round_model: PyTree

  @property
  def params(self) -> PyTree:
    """[N, ...] view for evaluation: the round model x^k on every row."""
    return jax.tree.map(lambda r, x: jnp.broadcast_to(r, x.shape), self.round_model,
                        self.node_params)


class Selection(NamedTuple):
  nodes: jax.Array  # [count] int32 node ids, in list order
  valid: jax.Array  # [count] bool; False where fewer than `count` nodes qualify
  examined: jax.Array  # [count] int32 listed candidates examined up to each slot


def candidate_list(run_key: jax.Array, k, num_nodes: int) -> jax.Array:
  """L_k as a permutation of all node ids, from (run key, k) only: every node gets the same."""
  round_key = jax.random.fold_in(run_key, k)
  return jax.random.permutation(jax.random.fold_in(round_key, SAMPLING_STREAM), num_nodes)


def first_qualifying(order_N: jax.Array, listed_N: jax.Array, qualifies_N: jax.Array,
                     count: int) -> Selection:
  """The first `count` nodes of the list that are listed and qualify (e.g. answer)."""
  listed_o = listed_N[order_N]
  ok_o = qualifies_N[order_N] & listed_o
  positions = jnp.argsort(~ok_o, stable=True)[:count]  # first `count` qualifying, in order
  valid = ok_o[positions]
  examined_o = jnp.cumsum(listed_o, dtype=jnp.int32)
  examined = jnp.where(valid, examined_o[positions], examined_o[-1])
  return Selection(order_N[positions], valid, examined)


def modest_rounds(local_sgd: Callable, optimizer, *, num_nodes: int, sample_size: int,
                  aggregators: int = 1, success_fraction: float = 1.0,
                  membership: Membership | None = None, lr_decay: float = 1.0,
                  num_steps_N: jax.Array | None = None, min_models: int = 3,
                  inactivity_rounds: int = 50) -> Algorithm:
  """MoDeST's round structure for any local update.

  Args:
    local_sgd: one node's local phase, from `dfl.local.make_local_sgd`.
    optimizer: the local optax optimizer (fresh at every round, as in FedAvg).
    num_nodes: N, every node that ever takes part (see `dfl.membership`).
    sample_size: s, participants per round (fewer if fewer nodes respond).
    aggregators: a <= s, nodes that aggregate each round.
    success_fraction: sf in (0, 1]; an aggregator proceeds with floor(sf * s) models (>= 1).
    membership: join/leave/fail rounds per node; None: every node active throughout.
    lr_decay: eta_t = eta * lr_decay**t.
    num_steps_N: optional per-node local step counts (one local epoch over unequal shards).
    min_models: at the timeout (fewer than floor(sf * s) models arrived), aggregate only if at
      least this many did; else the round is void.
    inactivity_rounds: R, a failed node leaves the candidate lists after R silent rounds;
      0: never (it is probed forever).
  """
  s, a = sample_size, aggregators
  steps_N = None if num_steps_N is None else jnp.asarray(num_steps_N, jnp.int32)
  if not 1 <= a <= s <= num_nodes:
    raise ValueError(f"MoDeST needs 1 <= aggregators <= sample_size <= num_nodes, got "
                     f"aggregators={a}, sample_size={s}, num_nodes={num_nodes}.")
  if concrete(success_fraction) and not 0 < success_fraction <= 1:
    raise ValueError(f"success_fraction must be in (0, 1], got {success_fraction}.")
  if not (isinstance(min_models, int) and min_models >= 1):
    raise ValueError(f"algorithm.min_models must be an integer >= 1, got {min_models!r}.")
  if not (isinstance(inactivity_rounds, int) and inactivity_rounds >= 0):
    raise ValueError(f"algorithm.inactivity_rounds must be an integer >= 0 (0: never drop a "
                     f"failed node), got {inactivity_rounds!r}.")
  quorum = success_quorum(success_fraction, s)
  membership = membership or static_membership(num_nodes)
  if membership.num_nodes != num_nodes:
    raise ValueError(f"membership covers {membership.num_nodes} nodes, expected {num_nodes}.")

  def listed(k):
    return membership.candidates(k, inactivity_rounds)

  def samples(run_key, k):
    """(S_k, S_{k+1}): S_k drawn at round k - 1's end, S_{k+1} (and A_k) at round k's end."""
    this = first_qualifying(candidate_list(run_key, k, num_nodes), listed(k),
                            membership.answers(jnp.maximum(k - 1, 0)), s)
    following = first_qualifying(candidate_list(run_key, k + 1, num_nodes),
                                 listed(k + 1), membership.answers(k), s)
    return this, following

  def init(params_N):
    x0 = jax.tree.map(lambda x: x[:1], params_N)  # MoDeST needs one common starting model
    node_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_nodes,) + x.shape[1:]), x0)
    return ModestState(node_params, x0)

  def round_fn(state: ModestState, inputs: RoundInputs):
    if inputs.run_key is None:
      raise ValueError("MoDeST derives the candidate list of round k + 1 from RoundInputs.run_key; "
                       "run it with dfl.engine.make_chunk_runner (which sets it).")
    k = inputs.round
    sample, following = samples(inputs.run_key, k)
    delivered_S = sample.valid & membership.answers(k)[sample.nodes]

    # Local training of the sample only: gather its rows, one vmap, scatter back.
    data = inputs.data
    start_S = jax.tree.map(lambda x: x[sample.nodes], state.node_params)
    shards_S = NodeData(data.x, data.y, data.indices[sample.nodes], data.sizes[sample.nodes])
    keys_S = node_keys(inputs.key, num_nodes)[sample.nodes]
    lr_scale = jnp.asarray(lr_decay, jnp.float32) ** k

    steps_S = None if steps_N is None else steps_N[sample.nodes]

    def train(params, key, shard, num_steps):
      trained, _, loss = local_sgd(params, optimizer.init(params), key, shard, lr_scale, num_steps)
      return trained, loss

    in_axes = (0, 0, NodeData(None, None, 0, 0), None if steps_S is None else 0)
    trained_S, loss_S = node_map(train, in_axes=in_axes)(start_S, keys_S, shards_S, steps_S)

    # Aggregation: the first `quorum` delivered models to arrive; at the timeout all that arrived
    # if they are at least `min_models`; else none (a void round).
    arrival_S = jax.random.uniform(jax.random.fold_in(inputs.key, ARRIVAL_STREAM), (s,))
    arrival_rank_S = jnp.argsort(jnp.argsort(jnp.where(delivered_S, arrival_S, 2.0)))
    arrived = jnp.sum(delivered_S)
    used_S = delivered_S & jnp.where(arrived >= quorum, arrival_rank_S < quorum,
                                     arrived >= min_models)
    used = jnp.sum(used_S)

    def average(y_S, previous):
      mask = used_S.reshape((s,) + (1,) * (y_S.ndim - 1))
      mean = jnp.sum(jnp.where(mask, y_S, 0), axis=0) / used.astype(y_S.dtype)
      return jnp.where(used > 0, mean[None], previous)

    round_model = jax.tree.map(average, trained_S, state.round_model)

    def scatter(rows_N, nodes, keep, new_rows):
      mask = keep.reshape(keep.shape + (1,) * (new_rows.ndim - 1))
      return rows_N.at[nodes].set(jnp.where(mask, new_rows, rows_N[nodes]))

    node_params = jax.tree.map(lambda x, y: scatter(x, sample.nodes, delivered_S, y),
                               state.node_params, trained_S)
    node_params = jax.tree.map(
        lambda x, m: scatter(x, following.nodes, following.valid,
                             jnp.broadcast_to(m, (s,) + m.shape[1:])), node_params, round_model)

    sent_N, received_N, control = _communication(num_nodes, a, sample, delivered_S, following)
    trained = jnp.sum(sample.valid)
    loss = jnp.sum(jnp.where(sample.valid, loss_S, 0.0)) / jnp.maximum(trained, 1)
    zeros_N = jnp.zeros(num_nodes, bool)  # for the simulated clock (dfl/system/clock.py)
    metrics = RoundMetrics(loss=loss, transfers=jnp.sum(sent_N), sent_N=sent_N,
                           received_N=received_N, control_messages=control,
                           trained_N=zeros_N.at[sample.nodes].max(delivered_S),
                           aggregator_N=zeros_N.at[following.nodes[:a]].max(
                               following.valid[:a]))
    return ModestState(node_params, round_model), metrics

  return Algorithm(init, round_fn)


def _communication(num_nodes: int, a: int, sample: Selection, delivered_S: jax.Array,
                   following: Selection):
  """Model transfers per node (sent [N], received [N]) and control messages of one round."""
  agg_A, agg_valid_A = following.nodes[:a], following.valid[:a]
  # Uploads: delivered participant j -> aggregator i, for i != j.
  up_SxA = delivered_S[:, None] & agg_valid_A[None, :] & (sample.nodes[:, None] != agg_A[None, :])
  # Downloads: aggregator i -> member n of S_{k+1}, for n != i (A_k is the head of S_{k+1}).
  down_AxS = (agg_valid_A[:, None] & following.valid[None, :]
              & (agg_A[:, None] != following.nodes[None, :]))
  zeros = jnp.zeros(num_nodes, jnp.int32)
  sent_N = (zeros.at[sample.nodes].add(up_SxA.sum(1, dtype=jnp.int32))
            .at[agg_A].add(down_AxS.sum(1, dtype=jnp.int32)))
  received_N = (zeros.at[agg_A].add(up_SxA.sum(0, dtype=jnp.int32))
                .at[following.nodes].add(down_AxS.sum(0, dtype=jnp.int32)))
  # Probes and replies to find the first a (participants) and first s (aggregators) that answer.
  num_agg = jnp.sum(agg_valid_A, dtype=jnp.int32)
  control = (jnp.sum(delivered_S, dtype=jnp.int32) * (following.examined[a - 1] + num_agg)
             + num_agg * (following.examined[-1] + jnp.sum(following.valid, dtype=jnp.int32)))
  return sent_N, received_N, control


def success_quorum(success_fraction, sample_size: int):
  """max(1, floor(sf * s)): the reference's floor, one arrival at least. A traced sf (batched
  over runs) is floored in float32 on device; `check_batchable_quorum` makes sure that equals
  the host's float64 floor for the run's value."""
  if concrete(success_fraction):
    return max(1, math.floor(success_fraction * sample_size))
  product = success_fraction.astype(jnp.float32) * jnp.float32(sample_size)
  return jnp.maximum(1, jnp.floor(product).astype(jnp.int32))


def check_batchable_quorum(success_fraction: float, sample_size: int) -> None:
  """Refuses an sf whose float32 product floors differently from the float64 one."""
  device = max(1, int(np.floor(np.float32(success_fraction) * np.float32(sample_size))))
  if device != success_quorum(float(success_fraction), sample_size):
    raise ValueError(f"algorithm.success_fraction={success_fraction} cannot be batched with "
                     f"sample_size={sample_size}: floor(sf * s) differs in float32; run it "
                     "separately (launch.sweep --batch none).")


def modest(loss_fn: Callable, *, num_nodes: int, lr: float, local_steps: int, batch_size: int,
           sample_size: int = 10, aggregators: int = 1, success_fraction: float = 1.0,
           membership: Membership | None = None, momentum: float = 0.0,
           weight_decay: float = 0.0, lr_decay: float = 1.0,
           num_steps_N: jax.Array | None = None, min_models: int = 3,
           inactivity_rounds: int = 50, clip_norm: float | None = None,
           augment: Callable | None = None, max_epochs: int | None = None) -> Algorithm:
  """MoDeST with K = local_steps steps of local SGD, or per-node `num_steps_N` (local epochs);
  see the module docstring."""
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay,
                             clip_norm=clip_norm)
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=local_steps, batch_size=batch_size,
                             augment=augment, max_epochs=max_epochs)
  return modest_rounds(local_sgd, optimizer, num_nodes=num_nodes, sample_size=sample_size,
                       aggregators=aggregators, success_fraction=success_fraction,
                       membership=membership, lr_decay=lr_decay, num_steps_N=num_steps_N,
                       min_models=min_models, inactivity_rounds=inactivity_rounds)


PAPER_SAMPLE_SIZE = 10  # s of the paper's experiments (capped at num_nodes)


def _only_modest(field: str, default, leave: str):
  def if_unused(a, name, users):
    if a[field] == default:
      return None
    return (f"algorithm.{field}={a[field]} is only used by algorithm.name='modest', not "
            f"{name!r}; {leave}.")
  return if_unused


def _membership_unused(a, name, users):
  parse_schedule(a.membership)  # raises on a malformed schedule
  if not a.membership:
    return None
  return (f"algorithm.membership={a.membership!r} is only simulated by algorithm.name='modest', "
          f"not {name!r}; leave it empty.")


SAMPLE_SIZE = Hyperparameter("sample_size", lambda num_nodes: min(PAPER_SAMPLE_SIZE, num_nodes),
                             doc="s, nodes sampled per round; None: min(10, num_nodes)")
AGGREGATORS = Hyperparameter("aggregators", 1, doc="a, nodes that aggregate per round (a <= s)")
SUCCESS_FRACTION = Hyperparameter(
    "success_fraction", 1.0, batchable=True,
    doc="sf, aggregate once floor(sf * s) models arrived")
MIN_MODELS = Hyperparameter("min_models", 3, if_unused=_only_modest("min_models", 3,
                                                                    "leave it at 3"),
                            doc="at the timeout, fewer arrivals than this void the round")
INACTIVITY_ROUNDS = Hyperparameter(
    "inactivity_rounds", 50, if_unused=_only_modest("inactivity_rounds", 50, "leave it at 50"),
    doc="drop a failed node after R silent rounds (0: never)")
MEMBERSHIP = Hyperparameter("membership", "", if_unused=_membership_unused,
                            doc="join/leave/fail events, 'ROUND:EVENT:AMOUNT,...'")


def _check(a, num_nodes: int) -> None:
  s = SAMPLE_SIZE.resolve(a.sample_size, num_nodes)
  require(1 <= s <= num_nodes, f"algorithm.sample_size must be in [1, num_nodes={num_nodes}], "
          f"got {s}.")
  require(1 <= a.aggregators <= s, f"algorithm.aggregators must be in [1, sample_size={s}], got "
          f"{a.aggregators}.")
  require(0 < a.success_fraction <= 1,
          f"algorithm.success_fraction must be in (0, 1], got {a.success_fraction}.")
  require(isinstance(a.min_models, int) and a.min_models >= 1,
          f"algorithm.min_models must be an integer >= 1, got {a.min_models!r}.")
  require(isinstance(a.inactivity_rounds, int) and a.inactivity_rounds >= 0,
          f"algorithm.inactivity_rounds must be an integer >= 0 (0: never drop a failed node), "
          f"got {a.inactivity_rounds!r}.")
  parse_schedule(a.membership)  # raises on a malformed schedule


@registry.register("modest", check=_check, hyperparameters=(
    *common.LOCAL_UPDATE, common.MOMENTUM, SAMPLE_SIZE, AGGREGATORS, SUCCESS_FRACTION,
    MIN_MODELS, INACTIVITY_ROUNDS, MEMBERSHIP))
def build(a, ctx) -> Algorithm:
  return modest(ctx.loss_fn, num_nodes=ctx.num_nodes,
                sample_size=registry.resolved(a, "sample_size", ctx.num_nodes),
                aggregators=a.aggregators, success_fraction=a.success_fraction,
                membership=build_membership(ctx.num_nodes, a.membership, seed=ctx.seed),
                momentum=registry.resolved(a, "momentum"), min_models=a.min_models,
                inactivity_rounds=a.inactivity_rounds, **common.local_options(a, ctx))
