"""Membership schedules: parsing, resolution into per-node rounds, masks, clear errors."""
import numpy as np
import pytest

from dfl.config_checks import validate_config
from dfl.membership import Event, build_membership, parse_schedule, static_membership


def test_parse_counts_fractions_and_round_order():
  assert parse_schedule("") == ()
  assert parse_schedule(" 50:fail:0.8 , 30:join:10,30:leave:2") == (
      Event(30, "join", 10, None), Event(30, "leave", 2, None), Event(50, "fail", None, 0.8))


@pytest.mark.parametrize("schedule, message", [
    ("50:explode:3", "Unknown membership event 'explode'"),
    ("fail:0.8", "expected ROUND:EVENT:AMOUNT"),
    ("50:fail:1.5", r"fraction must be in \(0, 1\]"),
    ("50:join:0.5", "'join' takes a count"),
    ("50:leave:0", "count must be >= 1"),
])
def test_parse_errors_name_the_bad_item(schedule, message):
  with pytest.raises(ValueError, match=message):
    parse_schedule(schedule)


def test_fail_fraction_of_active_nodes():
  m = build_membership(20, "5:fail:0.8", seed=3)
  assert m.active_at(4).sum() == 20 and m.active_at(5).sum() == 4
  assert np.asarray(m.listed(5)).all()  # failures are silent: still listed
  assert np.array_equal(np.asarray(m.responsive(5)), m.active_at(5))


def test_failed_nodes_leave_the_candidates_after_the_inactivity_rounds():
  """Failing at round 5, a node last answered in round 4; with R = 3 it is a candidate in rounds
  5, 6, 7 (probed in vain) and none from round 8 on. R = 0 keeps it forever; a node that left is
  no candidate either way, a live one always is."""
  m = build_membership(10, "5:fail:4,2:leave:1", seed=3)
  failed = np.flatnonzero(m.failed_at == 5)
  left = np.flatnonzero(m.left_at == 2)
  live = np.setdiff1d(np.arange(10), np.concatenate([failed, left]))
  assert len(failed) == 4 and len(left) == 1 and len(live) == 5
  for t, expected in [(4, True), (5, True), (7, True), (8, False), (1000, False)]:
    c = np.asarray(m.candidates(t, 3))
    assert c[failed].tolist() == [expected] * 4, t
    assert c[live].all() and (t < 2 or not c[left].any())
  assert np.asarray(m.candidates(10 ** 6, 0))[failed].all()
  assert np.array_equal(np.asarray(m.candidates(9, 0)), np.asarray(m.listed(9)))


def test_fractions_compound_over_events():
  m = build_membership(16, "2:fail:0.5,4:fail:0.5", seed=0)
  assert [m.active_at(t).sum() for t in (1, 2, 3, 4)] == [16, 8, 8, 4]


def test_join_is_listed_from_the_next_round_and_leave_unlists():
  m = build_membership(20, "3:join:5,6:leave:4", seed=1)
  listed = lambda t: np.asarray(m.listed(t))
  assert listed(3).sum() == 15 and not listed(3)[15:].any()  # joiners are the last ids
  assert listed(4).sum() == 20
  assert listed(6).sum() == 16 and m.active_at(6).sum() == 16


def test_resolution_is_deterministic_in_the_seed():
  a, b = (build_membership(30, "4:fail:0.5", seed=7) for _ in range(2))
  c = build_membership(30, "4:fail:0.5", seed=8)
  assert np.array_equal(a.failed_at, b.failed_at)
  assert not np.array_equal(a.failed_at, c.failed_at)


@pytest.mark.parametrize("schedule, message", [
    ("3:join:8", "initial population would be 0"),
    ("3:leave:9", "needs 9 active nodes"),
    ("3:fail:1.0", "no responsive node at round 3"),
])
def test_impossible_schedules_fail_clearly(schedule, message):
  with pytest.raises(ValueError, match=message):
    build_membership(8, schedule)


def test_static_membership_is_always_active():
  m = static_membership(5)
  assert m.active_at(0).all() and m.active_at(10**6).all()


def test_config_validation(tiny):
  with pytest.raises(ValueError, match="only simulated by algorithm.name='modest'"):
    validate_config(tiny(algorithm__membership="3:fail:0.5"))
  with pytest.raises(ValueError, match="Bad membership item"):
    validate_config(tiny(algorithm__name="modest", algorithm__sample_size=2,
                         algorithm__membership="3-fail-0.5"))
  with pytest.raises(ValueError, match=r"sample_size must be in \[1, num_nodes=4\], got 5"):
    validate_config(tiny(algorithm__name="modest", algorithm__sample_size=5))
  with pytest.raises(ValueError, match=r"aggregators must be in \[1, sample_size=2\], got 3"):
    validate_config(tiny(algorithm__name="modest", algorithm__sample_size=2,
                         algorithm__aggregators=3))
  with pytest.raises(ValueError, match=r"success_fraction must be in \(0, 1\], got 0.0"):
    validate_config(tiny(algorithm__name="modest", algorithm__sample_size=2,
                         algorithm__success_fraction=0.0))
  validate_config(tiny(algorithm__name="modest", algorithm__sample_size=2,
                       algorithm__membership="3:fail:0.5"))
