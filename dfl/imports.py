"""A user's own pieces named in a config by import path, "package.module:attribute".

`model.name`, `data.name` and `algorithm.name` take either a built-in name or such a path, so a
researcher plugs in a network, a dataset or an algorithm without editing the library, and every
process that reads the config (`launch.main`, the subprocesses of `launch.sweep`) finds it the
same way, as long as the package is importable there (installed, in the working directory, or
on PYTHONPATH).
"""
from __future__ import annotations

import importlib
from typing import Any

from dfl.errors import UserError


def is_import_path(name: Any) -> bool:
  """True for "module:attribute" (built-in names never hold a colon)."""
  return isinstance(name, str) and ":" in name


def resolve(path: str, field: str) -> Any:
  """The object `path` = "package.module:attribute" names (attribute may be dotted).

  Every failure is a UserError naming `field`, the module and the attribute that failed.
  """
  module_name, _, attribute = path.partition(":")
  if not module_name or not attribute:
    raise UserError(f"{field}={path!r} is not an import path; write 'package.module:attribute'.")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise UserError(f"{field}={path!r}: cannot import module {module_name!r} ({e}); is it "
                    "installed, in the working directory or on PYTHONPATH?") from None
  target = module
  for part in attribute.split("."):
    if not hasattr(target, part):
      raise UserError(f"{field}={path!r}: module {module_name!r} has no attribute "
                      f"{attribute!r} (missing: {part!r}).")
    target = getattr(target, part)
  return target
