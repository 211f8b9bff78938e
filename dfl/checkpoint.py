"""Checkpoints and exact resume of a run, on Orbax's CheckpointManager; preemption and divergence.

A checkpoint is one Orbax step per saved round, under `workdir/checkpoints/<round>/`:

    state/  the algorithm state pytree, whatever its shape: every node's parameters and
            optimizer state and anything an algorithm adds (membership masks, typed
            `jax.random.key` arrays, int counters). Restored into the structure that
            `algorithm.init` builds, so NamedTuples come back as NamedTuples.
    meta/   JSON: the round; the driver's host-side accumulators (communication counters,
            wall-clock seconds, the evaluation record of that round); the run's config and its
            fingerprint; a checksum of the state, verified on restore.

Nothing else needs saving for an exact replay: every random draw is keyed by
fold_in(fold_in(key(seed), stream), round) (and the node), local data order is drawn each round
from that key, and a topology's W_t is a function of t alone. Round t after a resume therefore
sees exactly the inputs it saw in the uninterrupted run.

Safety: Orbax writes a step to a temporary directory and renames it when complete, and deletes
old steps (beyond `max_to_keep`) only after a newer one is complete. A step that fails to
restore (truncated files, checksum mismatch) is moved to `workdir/checkpoints_corrupt/` with a
one-line warning and the next older one is used; no checkpoint is ever deleted for being
unreadable.

Failures end in one line that says what happened, what was kept and what to do, raised as a
CheckpointError: no readable checkpoint (NoReadableCheckpoint), a save that failed
(CheckpointWriteError), a full disk or quota anywhere in the workdir (DiskFull: an OSError with
ENOSPC/EDQUOT, or Orbax/TensorStore's RESOURCE_EXHAUSTED while writing). Orbax's own logging of
failures that are reported this way is dropped, and so are the leftovers of reads and writes
abandoned after one failed: its event loop is closed while others are still in flight, and
TensorStore then prints "RuntimeError: Event loop is closed" for each, and the abandoned
coroutines fail again at interpreter shutdown ("ImportError: sys.meta_path is None").
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging as std_logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from dfl.errors import RunFailure, UserError

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"

# Config fields that may differ between a run and its resume: they change neither the state's
# shape nor the rounds' meaning (eval.every_rounds, mesh.*, train.execution and model.conv change
# how rounds are compiled and placed, so results may then differ in the last bits). A key ending
# in "." covers a section.
RESUMABLE_CHANGES = ("train.rounds", "eval.every_rounds", "eval.batch_size", "data.dir",
                     "checkpoint.", "logging.", "mesh.", "train.execution", "model.conv")
# Those of them that change how rounds are compiled or placed (a resume warns about last bits).
RECOMPILING_CHANGES = ("eval.every_rounds", "mesh.", "train.execution", "model.conv")


class _Quiet:
  restoring = 0  # > 0 while restore() tries steps: it reports their failures itself


def _quiet_orbax(record) -> bool:
  """Orbax logs every stage of every save at INFO: keep its warnings and errors only, and not
  those about failures that this module reports in one line itself."""
  if "/orbax/" not in record.pathname:
    return True
  if _Quiet.restoring or record.levelno < std_logging.WARNING:
    return False
  if record.exc_info and record.exc_info[1] is not None and is_disk_full(record.exc_info[1]):
    return False
  return not _disk_full_text(record.getMessage())


# On the logger, not a handler: Orbax logs through absl's logger whichever handlers are set up.
std_logging.getLogger("absl").addFilter(_quiet_orbax)


def _orbax_leftover_unraisable(unraisable) -> bool:
  """An error of an Orbax read or write abandoned after a failure, reported after the fact."""
  if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
    return True  # TensorStore completing a read for a closed loop (object None)
  code = getattr(unraisable.object, "cr_code", None)  # a coroutine finalized at shutdown
  return code is not None and "/orbax/" in code.co_filename


def _silence_abandoned_operations() -> None:
  """Drops the after-the-fact reports of the reads and writes that Orbax leaves in flight when
  one of them fails (they come from TensorStore's threads, so must be filtered in advance)."""
  if getattr(sys.unraisablehook, "_dfl_filter", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable, previous=previous, leftover=_orbax_leftover_unraisable):
    if not leftover(unraisable):
      previous(unraisable)
  hook._dfl_filter = True
  sys.unraisablehook = hook
  # "Task exception was never retrieved" for the sibling reads of the one that failed.
  std_logging.getLogger("asyncio").addFilter(lambda record: "/orbax/" not in record.getMessage())


def _join_orbax_threads(timeout_s: float = 120.0) -> None:
  """After a failed save: Orbax's threads for its other parts may still be writing (and failing);
  wait for them, so that none is cut off or fails again at interpreter shutdown."""
  deadline = time.monotonic() + timeout_s
  for thread in threading.enumerate():
    if (thread is not threading.current_thread() and thread.is_alive()
        and type(thread).__module__.startswith("orbax.")):
      # threading.Thread.join itself: Orbax's join re-raises the thread's error.
      threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))


class CheckpointError(RunFailure):
  """A checkpoint could not be read or written; the message says what was kept and what to do."""


class NoReadableCheckpoint(CheckpointError):
  """The workdir has checkpoints and none of them reads back intact."""


class CheckpointWriteError(CheckpointError):
  """Saving a checkpoint failed (other than for a full disk)."""


class DiskFull(CheckpointError):
  """No space left (or quota exceeded) while the run wrote to its workdir."""


def _disk_full_text(text: str) -> bool:
  return ("No space left on device" in text or "Disk quota exceeded" in text
          or "os_error_code='28'" in text
          or ("RESOURCE_EXHAUSTED" in text and "writ" in text.lower()
              and "Too many open files" not in text))


def is_disk_full(error: BaseException) -> bool:
  """ENOSPC/EDQUOT anywhere in the error's chain, or TensorStore's RESOURCE_EXHAUSTED on a write
  (how Orbax reports a full disk from its array writer)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if _disk_full_text(str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def _reason(error: BaseException, width: int = 150) -> str:
  """The error as one short line: the type and message of its root cause (Orbax wraps
  TensorStore's errors), TensorStore's nested context and spec cut down to the innermost cause."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines()
  text = (lines[0] if lines else "").split(" [tensorstore_spec")[0]
  status = re.match(r"([A-Z_]{4,}): ", text)  # TensorStore: 'CODE: ctx "path": ... : cause'
  if status:
    text = f"{status.group(1)}: {text.rsplit(chr(34) + ': ', 1)[-1]}"
  text = f"{type(error).__name__}: {text}".rstrip(": ")
  return text if len(text) <= width else text[:width - 3] + "..."


def complete_rounds(workdir: str) -> list[int]:
  """Rounds with a complete checkpoint in workdir (Orbax renames a step's folder to its number
  only once it is whole)."""
  try:
    names = os.listdir(os.path.join(workdir, CHECKPOINT_DIR))
  except OSError:
    return []
  return sorted(int(n) for n in names if n.isdigit())


def kept_and_next(workdir: str, exclude: Optional[int] = None) -> tuple[str, str]:
  """('the checkpoint of round K' or 'no checkpoint', 'resume from round K' or 'start over')."""
  rounds = [r for r in complete_rounds(workdir) if r != exclude]
  if not rounds:
    return "no checkpoint (none was complete yet)", "start it again from round 0"
  return (f"the checkpoint of round {rounds[-1]} (the newest complete one)",
          f"resume from round {rounds[-1]}")


def disk_full_error(workdir: str, what: str, exclude: Optional[int] = None) -> DiskFull:
  kept, then = kept_and_next(workdir, exclude)
  return DiskFull(f"No space left on device (or quota exceeded) while writing {what} in "
                  f"{workdir}. Kept: {kept}. Free space there (or move the workdir to a disk "
                  f"with room) and run the same command again to {then}.")


class ConfigMismatchError(UserError):
  """The workdir holds a run whose config differs in fields that matter."""


class Diverged(RunFailure, FloatingPointError):
  """Non-finite loss or state; nothing of the offending chunk was saved."""


class Preempted(Exception):
  """SIGTERM/SIGINT arrived; a checkpoint of the last finished round was written.

  Exit code convention (launch/main.py): 128 + signal number, as if killed by the signal
  (143 for SIGTERM, 130 for SIGINT), so schedulers treat the run as preempted, not failed.
  """

  def __init__(self, signum: int, round_done: int, message: str):
    super().__init__(message)
    self.signum, self.round_done = signum, round_done
    self.exit_code = 128 + signum


# ---------------------------------------------------------------------------------------------
# Config comparison.


def config_to_dict(config) -> dict:
  """A JSON round trip, so tuples and lists compare equal to what a checkpoint holds."""
  return json.loads(config.to_json())


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _resumable(field: str) -> bool:
  return any(field == f or (f.endswith(".") and field.startswith(f)) for f in RESUMABLE_CHANGES)


def config_fingerprint(config_dict: dict) -> str:
  """sha256 of the fields that define the run (all but RESUMABLE_CHANGES)."""
  kept = {k: v for k, v in sorted(_flatten(config_dict).items()) if not _resumable(k)}
  return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


# Fields added after runs were saved, with the value that gives what a run saved without them
# did: a saved config that lacks one is compared as if it held that value.
ADDED_FIELDS = {"data.min_samples": 0, "eval.local_subset": "shared"}


def config_differences(saved: dict, current: dict) -> tuple[list[str], list[str]]:
  """Returns (blocking, harmless) differences as 'field: old -> new' lines."""
  old, new = _flatten(saved), _flatten(current)
  blocking, harmless = [], []
  for field in sorted(set(old) | set(new)):
    a = old.get(field, ADDED_FIELDS.get(field, "<absent>"))
    b = new.get(field, "<absent>")
    if a != b:
      (harmless if _resumable(field) else blocking).append(f"{field}: {a!r} -> {b!r}")
  return blocking, harmless


def check_resumable(saved: dict, current: dict, *, what: str) -> list[str]:
  """Raises ConfigMismatchError listing the differing fields; returns the harmless ones.

  `what` names the saved run in the message, e.g. "the checkpoint of round 40 in /w".
  """
  blocking, harmless = config_differences(saved, current)
  if blocking:
    raise ConfigMismatchError(
        f"Cannot continue {what}: it was made with a different config in fields that change "
        f"the state or the meaning of the run (saved -> now):\n  " + "\n  ".join(blocking) +
        "\nRun again with the saved values to resume, use a new --workdir, or add "
        "--config.checkpoint.fresh=True to discard the run in this workdir and start over.")
  return harmless


# ---------------------------------------------------------------------------------------------
# On-device checks of the state: per-node finiteness, and a checksum for restore.


@jax.jit
def _finite_nodes(state) -> jax.Array:
  num_nodes = jax.tree.leaves(state)[0].shape[0]
  checks = [jnp.ones(num_nodes, bool)]
  for x in jax.tree.leaves(state):
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      continue
    if x.ndim >= 1 and x.shape[0] == num_nodes:
      checks.append(jnp.isfinite(x.reshape(num_nodes, -1)).all(axis=1))
    else:  # a leaf without the node axis: blame every node
      checks.append(jnp.broadcast_to(jnp.isfinite(x).all(), (num_nodes,)))
  return jnp.stack(checks).all(axis=0)


def nonfinite_nodes(state) -> list[int]:
  """Indices of the nodes with any NaN/inf in their slice of the state (computed on device;
  gathered from every process when the node axis spans several hosts)."""
  finite_N = multihost_utils.process_allgather(_finite_nodes(state), tiled=True)
  return np.flatnonzero(~np.asarray(finite_N)).tolist()


def _words(x: jax.Array) -> jax.Array:
  """The leaf's raw bits as a flat uint32 vector (any dtype, typed keys included)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()


@jax.jit
def _checksum(state) -> jax.Array:
  total = jnp.uint32(0)
  for i, x in enumerate(jax.tree.leaves(state)):
    w = _words(x)
    position = jnp.arange(w.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(2 * i + 1)
    total = total + jnp.sum(w * position, dtype=jnp.uint32)  # wraps mod 2^32
  return total


def state_checksum(state) -> int:
  """A position-weighted sum of the state's bits, mod 2^32: detects silent corruption."""
  return int(_checksum(state))


# ---------------------------------------------------------------------------------------------
# The checkpoint directory.


def _check_shared(directory: str) -> None:
  """Multi-host: all processes write parts of one checkpoint, so they must see one directory."""
  token = int(multihost_utils.broadcast_one_to_all(np.int32(np.random.randint(1, 2**31 - 1))))
  marker = os.path.join(directory, ".shared_by_all_processes")
  if jax.process_index() == 0:
    with open(marker, "w") as f:
      f.write(str(token))
  multihost_utils.sync_global_devices("dfl checkpoint directory marker written")
  try:
    with open(marker) as f:
      sees = f.read() == str(token)
  except OSError:
    sees = False
  blind = np.flatnonzero(~multihost_utils.process_allgather(np.array([sees]), tiled=True))
  if blind.size:
    raise RuntimeError(
        f"Process(es) {blind.tolist()} cannot see {directory} as process 0 wrote it: in a "
        "multi-host run --workdir must be on a filesystem shared by all processes (Orbax "
        "writes each checkpoint from all of them).")


@dataclasses.dataclass
class Restored:
  round: int
  state: Any
  meta: dict


class RunCheckpoints:
  """The checkpoints of one workdir: save a round, restore the newest readable one."""

  def __init__(self, workdir: str, *, max_to_keep: int, async_save: bool):
    self.workdir = workdir
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)  # remove half-written steps of a killed run
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))
    self._in_flight: Optional[int] = None  # the round of an asynchronous save not yet waited on
    _silence_abandoned_operations()
    if jax.process_count() > 1:
      _check_shared(self.directory)

  def rounds(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_round(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, round_done: int, state, meta: dict) -> None:
    """Starts saving (in the background when async); the state may be donated right after.

    Raises DiskFull or CheckpointWriteError, naming the round whose save failed (the previous
    one's, which this waits for first, or this one's) and the checkpoint that was kept.
    """
    self.wait()
    meta = {**meta, "round": round_done, "state_checksum": state_checksum(state)}
    try:
      self._manager.save(round_done, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # noqa: BLE001 -- reported in one line, see _raise_write_error
      self._raise_write_error(round_done, e)
    self._in_flight = round_done

  def _raise_write_error(self, round_failed: Optional[int], error: Exception):
    _join_orbax_threads()
    what = ("a checkpoint" if round_failed is None
            else f"the checkpoint of round {round_failed}")
    if is_disk_full(error):
      raise disk_full_error(self.workdir, what, exclude=round_failed) from None
    kept, then = kept_and_next(self.workdir, exclude=round_failed)
    raise CheckpointWriteError(
        f"Could not write {what} to {self.directory} ({_reason(error)}). Kept: {kept}. Fix the "
        f"cause and run the same command again to {then}.") from error

  def restore(self, like_state, check_meta: Callable[[dict], None]) -> Optional[Restored]:
    """Restores the newest checkpoint that reads back intact, or returns None if there is none.

    like_state: a state of the right structure, shapes, dtypes and shardings (e.g. the initial
      state). check_meta(meta) runs before the state is read and may raise (config mismatch):
      such errors propagate. Unreadable steps are moved to CORRUPT_DIR once an older one
      restores; if none restores, raises with every failure listed and moves nothing.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like_state)
    _Quiet.restoring += 1
    try:
      return self._restore(abstract, check_meta)
    finally:
      _Quiet.restoring -= 1

  def _restore(self, abstract, check_meta: Callable[[dict], None]) -> Optional[Restored]:
    failures = []
    for step in reversed(self.rounds()):
      try:
        meta = self._manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
      except Exception as e:  # noqa: BLE001 -- any read error means this step is unusable
        failures.append((step, e))
        continue
      check_meta(meta)
      try:
        state = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract))).state
        if meta.get("round") != step or state_checksum(state) != meta.get("state_checksum"):
          raise ValueError("round or state checksum does not match its metadata")
      except Exception as e:  # noqa: BLE001
        failures.append((step, e))
        continue
      for bad, error in failures:
        target = self._move_aside(bad)
        print(f"warning: the checkpoint of round {bad} is unreadable ({_reason(error)}); moved "
              f"it to {target} (kept for inspection) and resuming from round {step}.",
              file=sys.stderr, flush=True)
      return Restored(step, state, meta)
    if failures:
      rounds = ", ".join(str(s) for s, _ in failures)
      raise NoReadableCheckpoint(
          f"No checkpoint in {self.directory} can be read back (rounds {rounds}; the newest "
          f"fails with {_reason(failures[0][1])}). Kept: all of them, "
          "nothing was moved or deleted. Inspect them, or add --config.checkpoint.fresh=True to "
          "discard them and start over.")
    return None

  def _move_aside(self, step: int) -> str:
    """Moves an unreadable step to CORRUPT_DIR; returns where it went."""
    target_root = os.path.join(self.workdir, CORRUPT_DIR)
    if jax.process_index() != 0:  # multi-host: process 0 owns the directory
      self._manager.reload()
      return os.path.join(target_root, str(step))
    target_root = os.path.join(self.workdir, CORRUPT_DIR)
    os.makedirs(target_root, exist_ok=True)
    target = os.path.join(target_root, str(step))
    suffix = 1
    while os.path.exists(target):
      target, suffix = os.path.join(target_root, f"{step}.{suffix}"), suffix + 1
    shutil.move(os.path.join(self.directory, str(step)), target)
    self._manager.reload()
    return target

  def wait(self) -> None:
    """Waits for a save in flight; raises DiskFull / CheckpointWriteError if it failed."""
    in_flight, self._in_flight = self._in_flight, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      self._raise_write_error(in_flight, e)

  def close(self, *, after_error: bool = False) -> None:
    """Waits for a save in flight and stops Orbax's threads; call it on every exit path.

    after_error: an exception is already on its way out; a failed save then adds one warning
    line instead of replacing that exception.
    """
    try:
      self.wait()
    except CheckpointError as e:
      if not after_error:
        self._close_quietly()
        raise
      print(f"warning: {e}", file=sys.stderr, flush=True)
    self._close_quietly()

  def _close_quietly(self) -> None:
    try:
      self._manager.close()
    except Exception:  # noqa: BLE001 -- the save's failure was reported by wait()
      pass


def discard_run(workdir: str, names: tuple[str, ...]) -> None:
  """checkpoint.fresh: deletes the previous run's checkpoints and outputs in `workdir`."""
  for name in (CHECKPOINT_DIR, CORRUPT_DIR) + names:
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
    else:
      continue
    logging.info("checkpoint.fresh: deleted %s", path)


# ---------------------------------------------------------------------------------------------
# metrics.jsonl across resumes.


def write_jsonl_atomic(path: str, records: list[dict]) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def rewind_metrics(path: str, round_done: int, record: dict, write: bool = True) -> list[dict]:
  """Rewrites metrics.jsonl to hold each evaluation up to `round_done` exactly once.

  Drops what a killed run logged after its last checkpoint (and a torn last line); `record`
  (the checkpoint's own evaluation) stands in if the file lost it. Returns the kept records
  (`write=False`: without rewriting the file, for processes that do not write outputs).
  """
  kept = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          r = json.loads(line)
        except json.JSONDecodeError:
          break  # a line torn by the kill: nothing after it was complete
        if r["round"] < round_done and (not kept or r["round"] > kept[-1]["round"]):
          kept.append(r)
  kept.append(record)
  if write:
    write_jsonl_atomic(path, kept)
  return kept


# ---------------------------------------------------------------------------------------------
# Preemption.


class PreemptionGuard:
  """Turns SIGTERM/SIGINT into a request that the loop honours at the next chunk boundary.

  After the first signal the previous handlers are back, so a second one acts at once.
  Signal handlers exist only in the main thread; elsewhere the guard does nothing.
  """
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous: dict = {}

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame) -> None:
    self.signum = signum
    print(f"\n{signal.Signals(signum).name} received: finishing the current chunk of rounds and "
          "writing a checkpoint (send it again to stop at once).", file=sys.stderr, flush=True)
    self._restore_handlers()

  def _restore_handlers(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def __exit__(self, *exc) -> None:
    self._restore_handlers()


# Test hook, off unless set: DFL_TEST_SELF_SIGNAL="SIGKILL:4:evaluated" makes the driver send
# itself SIGKILL when round 4 reaches that phase, so tests can interrupt a run at exact points:
#   "evaluated": round 4's metrics line is written, its checkpoint not started, and every
#                earlier checkpoint complete (the hook waits for saves in flight first);
#   "saving":    round 4's asynchronous checkpoint save has just been started.
TEST_SIGNAL_ENV = "DFL_TEST_SELF_SIGNAL"


def self_signal_hook(round_done: int, phase: str, checkpoints: RunCheckpoints) -> None:
  spec = os.environ.get(TEST_SIGNAL_ENV)
  if not spec:
    return
  name, at_round, at_phase = spec.split(":")
  if int(at_round) == round_done and at_phase == phase:
    if phase == "evaluated":
      checkpoints.wait()
    os.kill(os.getpid(), getattr(signal, name))
