"""The exceptions whose message is the whole story, printed without a traceback.

A `UserError` says what was wrong with the config, the data or the workdir and what would be
valid; the command-line entry points (launch/cli.py) print its message alone and exit with
status 2. It subclasses ValueError, so code that catches ValueError keeps working.
A `RunFailure` is a run stopped by something outside the code (a full disk, checkpoints that
no longer read back, a diverged loss); its message says what happened, what was kept and what
to do, and the entry points exit with status 3. Every other exception is a bug and keeps its
traceback.
"""
from __future__ import annotations

import contextlib
from typing import Iterator


class UserError(ValueError):
  """A bad config value, missing or malformed data, or an unusable workdir."""


class RunFailure(RuntimeError):
  """A run stopped by its environment or its numbers, not by a bug (see the module docstring)."""


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
