"""Aggregation rules against numpy loops and hand-computed numbers, on both mixing forms."""
import numpy as np
import jax.numpy as jnp
import pytest
from ml_collections import config_dict

import topologies
from dfl.aggregation import rules
from dfl.mixing import DenseMixing, SparseMixing, mix


def section(**kw):
  c = config_dict.ConfigDict(dict(rule="mean", trim=1.0, krum_f=1, multi_krum_m=1,
                                  clip_radius=None, balance_gamma=0.3, balance_kappa=1.0,
                                  balance_alpha=0.5))
  c.clip_radius = config_dict.placeholder(float)
  for k, v in kw.items():
    c[k] = v
  return c


# ---------------------------------------------------------------- numpy references, one node


def np_neighbourhood(W, i):
  """[(j, w_ij)] with the node itself first, then its neighbours j != i with w_ij != 0."""
  return [(i, W[i, i])] + [(j, W[i, j]) for j in range(len(W)) if j != i and W[i, j] != 0]


def np_rule(name, W, X, i, t=0, **p):
  slots = np_neighbourhood(W, i)
  xs = np.array([X[j] for j, _ in slots], np.float64)
  ws = np.array([w for _, w in slots], np.float64)
  m = len(slots)
  if name == "median":
    return np.median(xs, axis=0)
  if name == "trimmed_mean":
    trim = p["trim"]
    b = int(trim) if trim >= 1 else int(np.floor(trim * m))
    b = min(b, (m - 1) // 2)  # a neighbourhood met that is too small keeps one value (DeTM)
    out = np.zeros(xs.shape[1])
    for d in range(xs.shape[1]):
      order = np.argsort(xs[:, d], kind="stable")[b:m - b]
      out[d] = np.sum(ws[order] * xs[order, d]) / np.sum(ws[order])
    return out
  if name == "krum":
    f, mm = p["krum_f"], p["multi_krum_m"]
    scores = []
    for a in range(m):
      d = sorted(np.sum((xs[a] - xs[c]) ** 2) for c in range(m) if c != a)
      scores.append(sum(d[:max(m - f - 2, 1)]))
    chosen = np.argsort(scores, kind="stable")[:mm]
    return xs[chosen].mean(axis=0)
  if name == "clipped_gossip":
    tau = p["clip_radius"]
    dists = [np.linalg.norm(xs[a] - xs[0]) for a in range(1, m)]
    if tau is None:
      tau = sorted(dists)[-2] if len(dists) >= 2 else dists[-1]
    out = xs[0].copy()
    for a in range(1, m):
      z = xs[a] - xs[0]
      n = np.linalg.norm(z)
      out += ws[a] * (z * min(1.0, tau / n) if n > 0 else z)
    return out
  if name == "balance":
    g, k, al, T = p["balance_gamma"], p["balance_kappa"], p["balance_alpha"], p["T"]
    thr = g * np.exp(-k * t / T) * np.linalg.norm(xs[0])
    acc = [xs[a] for a in range(1, m) if np.linalg.norm(xs[a] - xs[0]) <= thr]
    return xs[0] if not acc else al * xs[0] + (1 - al) * np.mean(acc, axis=0)
  raise ValueError(name)


def both_forms(name, **options):
  topo = topologies.make(name, 8, seed=3, **options)
  idx, w = topo.neighbors(0)
  return (topo.matrix(0), DenseMixing(jnp.asarray(topo.matrix(0), jnp.float32)),
          SparseMixing(jnp.asarray(idx), jnp.asarray(w, jnp.float32)))


PARAMS = {
    "median": {},
    "trimmed_mean": {"trim": 1.0},
    "krum": {"krum_f": 0, "multi_krum_m": 2},
    "clipped_gossip": {"clip_radius": None},
    "balance": {"balance_gamma": 2.0, "balance_kappa": 1.0, "balance_alpha": 0.5},
}
GRAPHS = [("ring", {}), ("star", {}), ("erdos_renyi", {"edge_prob": 0.6}),
          ("random_regular", {"degree": 4})]


def tree(X_NxD):
  """A two-leaf pytree from [N, D] rows (D = 5: a [2, 2] kernel and a [1] bias)."""
  X = jnp.asarray(X_NxD, jnp.float32)
  return {"b": X[:, 4:], "k": X[:, :4].reshape(-1, 2, 2)}


def rows(t):
  return np.concatenate([np.asarray(t["k"]).reshape(len(t["b"]), -1), np.asarray(t["b"])], axis=1)


@pytest.mark.parametrize("graph,options", GRAPHS)
@pytest.mark.parametrize("rule", sorted(PARAMS))
def test_rule_matches_numpy_loop_on_both_forms(rule, graph, options):
  W, dense, sparse = both_forms(graph, **options)
  X = np.random.default_rng(0).normal(size=(8, 5))
  p = dict(PARAMS[rule], T=10)
  r = rules.build_rule(section(rule=rule, **PARAMS[rule]), num_rounds=10)
  expect = np.stack([np_rule(rule, W, X, i, t=3, **p) for i in range(8)])
  for form in (dense, sparse):
    got = rows(rules.aggregate(r, form, tree(X), t=3))
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)


def test_hand_computed_three_nodes():
  """x = 0, 1, 10 on the complete graph of 3 with W = 1/3 everywhere."""
  W = np.full((3, 3), 1 / 3)
  X = np.array([[0.0], [1.0], [10.0]])
  dense = DenseMixing(jnp.asarray(W, jnp.float32))
  sparse = SparseMixing(jnp.asarray([[0, 1, 2], [1, 2, 0], [2, 0, 1]]),
                        jnp.full((3, 3), 1 / 3, jnp.float32))
  cases = {
      ("median", ()): [1, 1, 1],
      ("trimmed_mean", (("trim", 1.0),)): [1, 1, 1],
      # τ = 2: node 0: 0 + (1 + 2) / 3 = 1; node 1: 1 + (-1 + 2) / 3 = 4/3; node 2:
      # 10 + (-2 - 2) / 3 = 26/3.
      ("clipped_gossip", (("clip_radius", 2.0),)): [1, 4 / 3, 26 / 3],
  }
  for (name, kw), expect in cases.items():
    r = rules.build_rule(section(rule=name, **dict(kw)))
    for form in (dense, sparse):
      got = np.asarray(rules.aggregate(r, form, jnp.asarray(X, jnp.float32)))[:, 0]
      np.testing.assert_allclose(got, expect, rtol=1e-6, err_msg=f"{name} {kw} {type(form)}")


def test_krum_hand_computed_four_nodes():
  """x = 0, 1, 3, 10 on the complete graph of 4, f = 0: each score sums the m - f - 2 = 2
  smallest squared distances: 1 + 9 = 10, 1 + 4 = 5, 4 + 9 = 13, 49 + 81 = 130. Krum takes
  x = 1 everywhere; multi-Krum with m = 2 averages 1 and 0."""
  X = jnp.asarray([[0.0], [1.0], [3.0], [10.0]])
  dense = DenseMixing(jnp.full((4, 4), 0.25))
  sparse = SparseMixing(jnp.asarray([[(i + k) % 4 for k in range(4)] for i in range(4)]),
                        jnp.full((4, 4), 0.25))
  for multi_m, expect in ((1, 1.0), (2, 0.5)):
    r = rules.build_rule(section(rule="krum", krum_f=0, multi_krum_m=multi_m))
    for form in (dense, sparse):
      np.testing.assert_allclose(np.asarray(rules.aggregate(r, form, X))[:, 0], [expect] * 4)


@pytest.mark.parametrize("graph,options", GRAPHS)
def test_no_trim_and_infinite_radius_are_plain_gossip(graph, options):
  _, dense, sparse = both_forms(graph, **options)
  X = tree(np.random.default_rng(1).normal(size=(8, 5)))
  no_trim = rules.Rule("trimmed_mean", rules.make_trimmed_mean(0.0))
  no_clip = rules.Rule("clipped_gossip", rules.make_clipped_gossip(float("inf")))
  for form in (dense, sparse):
    plain = rows(mix(form, X))
    for r in (no_trim, no_clip):
      np.testing.assert_allclose(rows(rules.aggregate(r, form, X)), plain, rtol=1e-6, atol=1e-6)


def test_mean_is_mix_bit_for_bit():
  _, dense, sparse = both_forms("erdos_renyi", edge_prob=0.5)
  X = tree(np.random.default_rng(2).normal(size=(8, 5)))
  for form in (dense, sparse):
    np.testing.assert_array_equal(rows(rules.aggregate(rules.build_rule(None), form, X)),
                                  rows(mix(form, X)))


def test_sparse_padding_slots_are_ignored():
  """A neighbour list padded with weight-0 self slots gives the dense answer (median of 3)."""
  X = jnp.asarray([[0.0], [5.0], [7.0], [100.0]])
  W = np.array([[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]]) / 3
  idx = jnp.asarray([[0, 1, 2, 0], [1, 0, 3, 1], [2, 0, 3, 2], [3, 1, 2, 3]])
  w = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0]], jnp.float32) / 3
  r = rules.build_rule(section(rule="median"))
  dense = np.asarray(rules.aggregate(r, DenseMixing(jnp.asarray(W, jnp.float32)), X))
  sparse = np.asarray(rules.aggregate(r, SparseMixing(idx, w), X))
  np.testing.assert_array_equal(dense[:, 0], [5, 5, 7, 7])
  np.testing.assert_array_equal(sparse, dense)


def test_neighbourhood_checks_name_the_field():
  ring = rules.neighbourhood_sizes(topologies.make("ring", 8).matrix(0))
  rules.check_neighbourhoods(section(rule="trimmed_mean", trim=1.0), ring)
  with pytest.raises(ValueError, match=r"aggregation.trim=2.0 .* node 0 aggregates only 3"):
    rules.check_neighbourhoods(section(rule="trimmed_mean", trim=2.0), ring)
  with pytest.raises(ValueError, match=r"aggregation.krum_f=1 .* at least f \+ 3 = 4"):
    rules.check_neighbourhoods(section(rule="krum", krum_f=1), ring)
  with pytest.raises(ValueError, match="aggregation.multi_krum_m=4"):
    rules.check_neighbourhoods(section(rule="krum", krum_f=0, multi_krum_m=4), ring)
  with pytest.raises(ValueError, match="Unknown aggregation.rule='mode'"):
    rules.check_section(section(rule="mode"))
  with pytest.raises(ValueError, match="aggregation.trim must be a count"):
    rules.check_section(section(rule="trimmed_mean", trim=1.5))
