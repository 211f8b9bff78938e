"""The one exception type for problems with what the user asked for.

A `UserError` says what was wrong with the config, the data or the workdir and what would be
valid; the command-line entry points (launch/cli.py) print its message alone, without a
traceback, and exit with status 2. Every other exception is a bug and keeps its traceback.
It subclasses ValueError, so code that catches ValueError keeps working.
"""
from __future__ import annotations

import contextlib
from typing import Iterator


class UserError(ValueError):
  """A bad config value, missing or malformed data, or an unusable workdir."""


class MissingInputError(UserError, FileNotFoundError):
  """A file or folder the config names does not exist (still a FileNotFoundError)."""


@contextlib.contextmanager
def user_input(*kinds: type[BaseException]) -> Iterator[None]:
  """Re-raises the given exception kinds (default ValueError and OSError) as UserError.

  For code that only validates or reads what the user named (a topology from its options, a
  dataset from its folder): its ValueErrors and OSErrors are about the input, not bugs.
  """
  kinds = kinds or (ValueError, OSError)
  try:
    yield
  except UserError:
    raise
  except kinds as e:
    message = (str(e) if not isinstance(e, OSError) or not e.filename
               else f"{e.strerror or e}: {e.filename}")
    raise (MissingInputError if isinstance(e, FileNotFoundError) else UserError)(message) from None
