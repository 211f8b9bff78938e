"""The declaration of one config field that an algorithm (or the variance-correction section)
reads: its name, the default that a None in the config stands for, its check, and whether it is
batchable, i.e. a number that enters the computation (a learning rate, a SAM radius) rather
than one that shapes the program (local steps, batch size): runs that differ only in batchable
fields can share one compiled program with a per-run value (see dfl/algorithms/registry.py).

No dependencies beyond dfl.errors, so that any module can declare its fields.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

from dfl.errors import UserError


def require(ok: bool, message: str) -> None:
  """Raises UserError(message) unless `ok` (the checks' one way to fail)."""
  if not ok:
    raise UserError(message)


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
  """One field of a config section.

  Attributes:
    name: the field's name in its section (`lr`, not `algorithm.lr`).
    default: the value a None (or a missing field) in the config stands for, or a function
      num_nodes -> value for a default that depends on N (MoDeST's sample size min(10, N)).
      For fields the config file always sets, the config file's value (the tests check that
      the two agree).
    batchable: a number that enters the computation, not the program's shapes.
    check: check(section) raises UserError naming the field, its value and what is valid.
    doc: one line for people.
    if_unused: if_unused(section, algorithm_name, users) -> a message, or None: refuses a
      value that an algorithm which does not read the field would silently ignore (checked on
      every config, not only on command-line overrides; `users` are the algorithms reading it).
  """
  name: str
  default: Any = None
  batchable: bool = False
  check: Optional[Callable[[Any], None]] = None
  doc: str = ""
  if_unused: Optional[Callable[[Any, str, Sequence[str]], Optional[str]]] = None

  def with_default(self, default: Any) -> "Hyperparameter":
    return dataclasses.replace(self, default=default)

  def resolve(self, value: Any, num_nodes: Optional[int] = None) -> Any:
    """`value`, or the default when it is None."""
    if value is not None:
      return value
    return self.default(num_nodes) if callable(self.default) else self.default
