"""Progress output: plain lines (no carriage-return redraws) when stderr is not a terminal."""
import io

from dfl.progress import PlainProgress, progress_bar


def test_plain_progress_prints_one_line_per_update():
  out = io.StringIO()
  bar = PlainProgress(total=30, desc="dfedavg/ring", file=out, min_interval=0.0)
  for acc in ("0.5", "0.6", "0.7"):
    bar.update(10)
    bar.set_postfix(acc=acc)
  lines = out.getvalue().splitlines()
  assert [l.split(",")[0] for l in lines] == [
      "dfedavg/ring: round 10/30 (33%)", "dfedavg/ring: round 20/30 (67%)",
      "dfedavg/ring: round 30/30 (100%)"]
  assert lines[-1].endswith("acc=0.7") and "\r" not in out.getvalue()


def test_plain_progress_throttles_but_always_prints_the_end():
  out = io.StringIO()
  bar = PlainProgress(total=30, desc="x", file=out, min_interval=3600.0)
  for _ in range(3):
    bar.update(10)
    bar.set_postfix()
  assert [l.split(",")[0] for l in out.getvalue().splitlines()] == [
      "x: round 10/30 (33%)", "x: round 30/30 (100%)"]


def test_disabled_progress_prints_nothing():
  out = io.StringIO()
  bar = PlainProgress(total=10, file=out, disable=True, min_interval=0.0)
  bar.update(10)
  bar.set_postfix()
  assert out.getvalue() == ""


def test_not_a_terminal_gets_plain_lines():
  # pytest captures stderr, so it is not a terminal here.
  assert isinstance(progress_bar(total=5), PlainProgress)
