"""What every command-line entry point shares: flag parsing and the reporting of user errors.

A user error (a `dfl.errors.UserError`, a flag absl cannot parse, a misspelt config field, a
workdir that cannot be written) prints one line, `error: <message>`, on stderr and exits with
status 2. So does a field of the `algorithm` (or `variance_correction`) section set with
--config.FIELD that the chosen algorithm does not read (`gossip` with `local_epochs`; see
dfl/algorithms/registry.py); launch.sweep applies its own rule for the fields a sweep shares
(launch/sweep.py). A `dfl.errors.RunFailure` (full disk, unreadable checkpoints, divergence) prints its
message the same way and exits with status 3. `--debug` (or the environment variable
DFL_DEBUG=1) shows the full traceback instead. Any other exception is a bug and keeps its
traceback (exit status 1).

    from launch import cli
    if __name__ == "__main__":
      cli.run(main)
"""
from __future__ import annotations

import ast
import difflib
import errno
import functools
import importlib.util
import logging
import os
import re
import sys
from typing import Any, Callable, NoReturn, Optional

from absl import app, flags

from dfl.errors import RunFailure, UserError

USER_ERROR_EXIT = 2
RUN_FAILURE_EXIT = 3
# OSErrors that say the workdir or the disk cannot be written: the user's to fix, not a bug.
_WORKDIR_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                   errno.ENOTDIR, errno.EISDIR, errno.EEXIST}

# Defined so that absl accepts --debug; debugging() reads sys.argv, because a flag error happens
# before FLAGS holds the value.
_DEBUG = flags.DEFINE_bool("debug", False, "Show the full traceback of user errors "
                           "(also: DFL_DEBUG=1).")


def debugging() -> bool:
  return bool(os.environ.get("DFL_DEBUG")) or ("--debug" in sys.argv)


def fail(message: str, status: int = USER_ERROR_EXIT) -> NoReturn:
  """Prints an error as one line and exits with `status` (2: a user error)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def load_config_module(config_arg: str):
  """The module of the config file that `--config=path.py[:arg]` names (in the repository or
  not), loaded from its path as ml_collections' config flag loads it."""
  path = config_arg.partition(":")[0]
  spec = importlib.util.spec_from_file_location("_dfl_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def config_from_arg(config_arg: str):
  """get_config() (or get_config(arg) for 'path.py:arg') of that config file."""
  module, arg = load_config_module(config_arg), config_arg.partition(":")[2]
  return module.get_config(arg) if arg else module.get_config()


def _load_config_file(config_arg: str):
  """The ConfigDict that `--config=path.py[:arg]` names, or None if it cannot be built."""
  try:
    return config_from_arg(config_arg)
  except Exception:  # the flag parser reports a bad config file itself
    return None


def _override_fields(argv: list[str]) -> list[str]:
  """The dotted fields of the --config.FIELD overrides, in the order typed."""
  fields = []
  for arg in argv:
    m = re.match(r"^--?(?:no)?config\.([^=\s]+)", arg)
    if m:
      fields.append(m.group(1))
  return fields


def _config_arg(argv: list[str]) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1]
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def unknown_field_message(config, field: str) -> Optional[str]:
  """'Unknown field a.b; did you mean a.c?' if `field` is not in `config`, else None."""
  node, parts = config, field.split(".")
  for depth, part in enumerate(parts):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      prefix = ".".join(parts[:depth])
      close = difflib.get_close_matches(part, keys, n=1)
      if close:
        meant = ".".join(parts[:depth] + close + parts[depth + 1:])
        return f"Unknown field {field}; did you mean {meant}?"
      if not keys:
        return f"Unknown field {field}: {prefix} is a value, not a section."
      return (f"Unknown field {field}; the fields of {prefix or 'the config'} are: "
              f"{', '.join(sorted(keys))}.")
    node = node[part]
  return None


# Sections whose `kwargs` take keys the config file does not declare (a user's model or
# dataset named by import path): --config.model.kwargs.width=64 creates model.kwargs.width.
OPEN_KWARGS = ("model", "data")


def split_kwargs_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str, Any]]]:
  """argv without the --config.<section>.kwargs.KEY=VALUE overrides, and those as (section,
  key, value); VALUE as a Python literal (64, 0.5, (3, 3), True), else as a string."""
  rest, found = [], []
  for arg in argv:
    m = re.match(rf"^--?config\.({'|'.join(OPEN_KWARGS)})\.kwargs\.(\w+)=(.*)$", arg, re.S)
    if not m:
      rest.append(arg)
      continue
    try:
      value = ast.literal_eval(m.group(3))
    except (ValueError, SyntaxError):
      value = m.group(3)
    found.append((m.group(1), m.group(2), value))
  return rest, found


def _apply_kwargs_overrides(overrides) -> None:
  config = getattr(flags.FLAGS, "config", None) if "config" in flags.FLAGS else None
  if overrides and config is None:
    fail("--config.<section>.kwargs.KEY=VALUE needs --config=FILE.")
  for section, key, value in overrides:
    with config[section].kwargs.unlocked():
      config[section].kwargs[key] = value


def refuse_unused_overrides(argv: list[str]) -> None:
  """One line and exit 2 if a --config.FIELD of argv sets a field the config's run does not
  read (only explicit overrides count: a config file may set fields for several algorithms)."""
  config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
  if config is None or not hasattr(config, "algorithm"):
    return
  from dfl.algorithms import registry  # here: launch.report needs no JAX
  try:
    registry.check_overrides(config, _override_fields(argv))
  except UserError as e:
    fail(str(e))


def parse_flags(argv: list[str], check_overrides: bool = True) -> list[str]:
  """absl's flag parsing, with its errors (and a misspelt --config.FIELD) as one line each;
  `check_overrides`: also refuse a --config.FIELD the run does not use."""
  try:
    argv, kwargs_overrides = split_kwargs_overrides(argv)
    original = list(sys.argv)
    sys.argv[:] = split_kwargs_overrides(sys.argv)[0]  # config_flags reads sys.argv itself
    try:
      rest = flags.FLAGS(argv)
    finally:
      sys.argv[:] = original  # launch.sweep hands every override on to its runs
    _apply_kwargs_overrides(kwargs_overrides)
    if check_overrides:
      refuse_unused_overrides(argv)
    return rest
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a missing field
    config_arg = _config_arg(argv)
    config = _load_config_file(config_arg) if config_arg else None
    if config is not None:
      for field in _override_fields(argv):
        message = unknown_field_message(config, field)
        if message:
          fail(message)
    if debugging():
      raise
    fail(f"a --config override could not be applied ({type(e).__name__}: {e}).")


def run(main: Callable[[list[str]], None], check_overrides: bool = True) -> None:
  """app.run(main) with one-line user errors (see the module docstring); `check_overrides`:
  refuse --config.FIELD flags that the config's run does not use (launch.sweep: False, it
  checks each run of the sweep itself)."""

  def guarded_main(argv):
    try:
      main(argv)
    except UserError as e:
      if debugging():
        raise
      fail(str(e))
    except RunFailure as e:
      if debugging():
        raise
      fail(str(e), RUN_FAILURE_EXIT)
    except OSError as e:
      if e.errno not in _WORKDIR_ERRNOS or debugging():
        raise
      where = f": {e.filename}" if e.filename else ""
      fail(f"cannot write{where} ({e.strerror or e}); finished rounds and checkpoints already "
           "written are kept.")

  # jax logs at INFO that it found no TPU on every start: noise for a user.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  app.run(guarded_main,
          flags_parser=functools.partial(parse_flags, check_overrides=check_overrides))
