"""What a sweep is: axes of config overrides, expanded into named runs (pure, no I/O).

An axis maps config fields to equally long lists of values: one field is a plain axis, several
fields are zipped (their i-th values go together). The runs are the cartesian product of the
axes, the first axis outermost. Values are kept as the text one would type after
`--config.<field>=`, so every run is exactly a `launch.main` command line.

An experiment config may define its own sweep next to get_config():

    def get_sweep():
      return [{"topology.name": ["ring", "torus", "complete"]},
              {"algorithm.name": ["dfedavg", "dpsgd"]},
              {"algorithm.lr": [0.1, 0.05], "algorithm.local_steps": [5, 10]},  # zipped
              {"seed": [0, 1, 2]}]
"""
from __future__ import annotations

import ast
import copy
import hashlib
import itertools
import re
from typing import Any, Callable, Iterable, Sequence

from ml_collections import config_dict

Axis = dict[str, list[str]]  # field -> values (as command-line text); >1 field = zipped
Overrides = tuple[tuple[str, str], ...]  # one run's swept (field, value) pairs, in axis order

_MAX_NAME = 150  # leaves room under the usual 255-byte file-name limit
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]")


def split_values(text: str) -> list[str]:
  """'a,b,(16,),(32, 32)' -> ['a', 'b', '(16,)', '(32, 32)']: commas split only outside brackets."""
  values, depth, current = [], 0, []
  for ch in text:
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if ch == "," and depth == 0:
      values.append("".join(current).strip())
      current = []
    else:
      current.append(ch)
  values.append("".join(current).strip())
  if any(not v for v in values):
    raise ValueError(f"Empty value in {text!r}; expected comma-separated values like a,b,c.")
  return values


def parse_axis_flag(flag: str) -> tuple[str, list[str]]:
  """'topology.name=ring,torus' -> ('topology.name', ['ring', 'torus'])."""
  field, sep, values = flag.partition("=")
  if not sep or not field.strip():
    raise ValueError(f"Bad sweep axis {flag!r}; expected FIELD=V1,V2,... e.g. topology.name=ring,torus.")
  field = field.strip().removeprefix("config.")
  return field, split_values(values)


def format_value(value: Any) -> str:
  """A Python value from get_sweep() as the command-line text that parses back to it."""
  if isinstance(value, str):
    return value
  if isinstance(value, (bool, int, float)):
    return str(value)
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  raise ValueError(f"Cannot pass sweep value {value!r} ({type(value).__name__}) on the command "
                   "line; use str, int, float, bool or tuple values.")


def axes_from_config(spec: Iterable[dict[str, Sequence[Any]]]) -> list[Axis]:
  """Normalizes the result of an experiment config's get_sweep()."""
  axes = []
  for axis in spec:
    if not isinstance(axis, dict) or not axis:
      raise ValueError(f"get_sweep() must return a list of non-empty dicts field -> values, got {axis!r}.")
    normalized = {}
    for field, values in axis.items():
      if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"get_sweep(): values of {field!r} must be a list, got {values!r}.")
      normalized[field] = [format_value(v) for v in values]
    axes.append(normalized)
  return axes


def zipped_axis(flags: Sequence[str]) -> Axis:
  """The --zip flags as one zipped axis."""
  return dict(parse_axis_flag(f) for f in flags)


def merge_axes(base: list[Axis], extra: list[Axis]) -> list[Axis]:
  """`extra` axes (command line) replace `base` axes (config file) over the same fields and are
  appended otherwise; a partial overlap is ambiguous and refused."""
  axes = list(base)
  for axis in extra:
    same = [i for i, a in enumerate(axes) if set(a) == set(axis)]
    if same:
      axes[same[0]] = axis
      continue
    for a in axes:
      if set(a) & set(axis):
        raise ValueError(f"Sweep axis over {sorted(axis)} overlaps the axis over {sorted(a)}; "
                         "give the whole axis again with the same fields.")
    axes.append(axis)
  return axes


def check_axes(axes: list[Axis], config: config_dict.ConfigDict, fixed: Iterable[str] = ()) -> None:
  """Every field exists in the config, zipped lists match in length, no field is set twice."""
  seen = set(fixed)
  for axis in axes:
    lengths = {f: len(v) for f, v in axis.items()}
    if len(set(lengths.values())) > 1:
      raise ValueError(f"Zipped sweep fields need equally many values, got {lengths}.")
    for field in axis:
      node = config
      for part in field.split("."):
        if not isinstance(node, config_dict.ConfigDict) or part not in node:
          raise ValueError(f"Sweep field {field!r} is not a field of the config "
                           f"(no {part!r} there); check the spelling against the config file.")
        node = node[part]
      if field in seen:
        raise ValueError(f"Field {field!r} is set twice (two axes, or an axis and --config.{field}).")
      seen.add(field)


def parse_value(text: str, kind: type):
  """A command-line value as launch.main's --config.FIELD=TEXT would parse it for a field of
  type `kind` (bool, int, float, str or tuple)."""
  if kind is bool:
    if text.lower() in ("true", "1"):
      return True
    if text.lower() in ("false", "0"):
      return False
    raise ValueError(f"expected true or false, got {text!r}")
  if kind in (int, float):
    return kind(text)
  if kind in (tuple, list):
    value = ast.literal_eval(text)
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
  return text


def with_overrides(config: config_dict.ConfigDict, overrides: Overrides) -> config_dict.ConfigDict:
  """A copy of `config` with a run's overrides applied, typed as the fields are."""
  config = copy.deepcopy(config)
  with config.unlocked():
    for field, text in overrides:
      node, leaf = _parent(config, field)
      try:
        node[leaf] = parse_value(text, node.get_type(leaf))
      except (ValueError, SyntaxError, TypeError) as e:
        raise ValueError(f"{field}={text!r}: {e}") from None
  return config


def with_values(config: config_dict.ConfigDict, values: dict[str, Any]) -> config_dict.ConfigDict:
  """`config` (changed in place) with the dotted fields of `values` set to those values."""
  with config.unlocked():
    for field, value in values.items():
      node, leaf = _parent(config, field)
      node[leaf] = value
  return config


def _parent(config: config_dict.ConfigDict, field: str):
  """(the section holding dotted `field`, its last name)."""
  *path, leaf = field.split(".")
  for part in path:
    config = config[part]
  return config, leaf


def check_runs(config: config_dict.ConfigDict, runs: Sequence[Overrides],
               validate: Callable[[config_dict.ConfigDict], None],
               resets: Sequence[dict[str, Any]] | None = None) -> None:
  """Validates every run's config before any run starts; raises one error listing each bad
  value with the runs it appears in. `resets[i]`: fields run i gets at these values instead
  (the shared flags left out of its command, back at the config file's values)."""
  problems: dict[str, list[str]] = {}
  for i, overrides in enumerate(runs):
    try:
      validate(with_values(with_overrides(config, overrides), resets[i] if resets else {}))
    except ValueError as e:
      problems.setdefault(str(e), []).append(run_name(overrides))
  if problems:
    lines = [f"{message} (in {len(names)} run(s), e.g. {names[0]})"
             for message, names in problems.items()]
    raise ValueError(f"{len(problems)} problem(s) in the sweep's values, nothing was started:\n  "
                     + "\n  ".join(lines))


def unused_fields(config: config_dict.ConfigDict, runs: Sequence[Overrides], fixed: Iterable[str],
                  unused_message: Callable[[config_dict.ConfigDict, str], str | None]
                  ) -> list[frozenset[str]]:
  """The rule for fields a run does not read (`unused_message(run_config, field)` says why, or
  None when the run reads it), applied to a whole sweep before any run starts:

  * a swept field must be read by every run it is set in (an axis over algorithm.rho crossed
    with algorithm.name=dfedavg,dfedsam would run dfedavg twice alike: zip the two instead);
  * a field set for every run (`fixed`: --config.FIELD, already applied to `config`) must be
    read by at least one run; the runs that do not read it do not get it (a shared
    --config.algorithm.rho over algorithm.name=dfedavg,dfedsam reaches dfedsam only).

  Returns, per run, the fixed fields to leave out of its command; raises one ValueError listing
  every problem with the runs it appears in.
  """
  fixed = list(dict.fromkeys(fixed))
  swept: dict[str, list[tuple[str, str]]] = {}  # field -> (run name, message) of each bad run
  dropped, first_reason = [], {}
  for overrides in runs:
    run_config = with_overrides(config, overrides)
    for field, _ in overrides:
      message = unused_message(run_config, field)
      if message:
        swept.setdefault(field, []).append((run_name(overrides), message))
    unused = set()
    for field in fixed:
      message = unused_message(run_config, field)
      if message:
        unused.add(field)
        first_reason.setdefault(field, message)
    dropped.append(frozenset(unused))
  lines = [f"{bad[0][1]} (swept, in {len(bad)} run(s), e.g. {bad[0][0]})"
           for field, bad in swept.items()]
  lines += [f"{first_reason[field]} (--config.{field} is set for every run, and none reads it)"
            for field in fixed if runs and all(field in d for d in dropped)]
  if lines:
    raise ValueError(f"{len(lines)} field(s) set but not used, nothing was started:\n  "
                     + "\n  ".join(lines))
  return dropped


def expand(axes: list[Axis]) -> list[Overrides]:
  """The runs of a sweep: cartesian product over axes, zip within an axis."""
  per_axis = [[tuple(zip(axis, combo)) for combo in zip(*axis.values())] for axis in axes]
  return [tuple(itertools.chain.from_iterable(parts)) for parts in itertools.product(*per_axis)]


def run_name(overrides: Overrides) -> str:
  """A stable, file-system-safe directory name, e.g. 'topology.name=ring__seed=0'.

  Characters outside [A-Za-z0-9._,=+-] become '_'; when that (or shortening a long name) loses
  information, a hash of the full text is appended so that distinct runs keep distinct names.
  """
  if not overrides:
    return "base"
  text = "__".join(f"{field}={value}" for field, value in overrides)
  safe = _UNSAFE.sub("_", text)
  if safe != text or len(safe) > _MAX_NAME:
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    safe = f"{safe[:_MAX_NAME]}__{digest}"
  return safe
