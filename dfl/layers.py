"""Convolution and pooling layers whose formulation suits the backend (issue 9).

`Conv` has exactly the parameters of `flax.linen.Conv` (kernel [kh, kw, Cin, Cout], optional
bias; its auto-name is `Conv_i` too; 'SAME' or 'VALID' padding; `kernel_init` / `bias_init` as
in flax, defaults lecun_normal / zeros), so checkpoints and initialisations do not depend on the
formulation. Two ways to compute it:

* `xla`: `lax.conv_general_dilated`, i.e. `nn.Conv` (cuDNN on GPU).
* `im2col`: the k*k shifted views of the padded input side by side, `[B, H', W', k*k*Cin]`, then
  one matmul with the kernel reshaped to `[k*k*Cin, Cout]`. Same numbers up to float rounding.

Why: XLA:CPU runs a convolution at the top level of a program through its fast library path
(~70 GFLOP/s here for LeNet's gradient), but inside a `while` loop, which is where the engine
runs every local step (`lax.scan`, and `lax.map` over nodes), the same convolutions ran 8-9x
slower (in a jax.profiler trace the kernel-gradient convolution alone took 145 ms per step,
against 28 ms for the whole gradient at the top level; README "Performance"). As matmuls they
keep the full rate inside loops and, vmapped, become batched matmuls instead of grouped
convolutions. `auto` = im2col on CPU, xla elsewhere; but inside `forward_only()` (evaluation:
no gradient is taken) `auto` = xla everywhere, because XLA:CPU's forward convolution keeps its
rate inside loops and im2col's patch tensor (LeNet-sized CNN: 627 KB per example) makes the
forward memory-bound: 10,000 test images through the CNN in a scan of 250-image batches took
4.4 s with xla against 9.4 s with im2col (issue 20's profile, docs/performance.md).

`max_pool_2x2` is the 2x2 / stride-2 max-pool as a reshape and a max: `nn.max_pool`'s gradient
(select-and-scatter, with a value/index reduce-window) took ~30% of the CNN's step on CPU; the
reshape form's gradient is elementwise. Forward values are identical; at tied maxima the
reshape form splits the gradient among the ties instead of giving it to the first one (after a
ReLU the ties are zeros, whose gradient the ReLU drops anyway).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

CONV_IMPLS = ("auto", "xla", "im2col")
_logged: set[tuple[str, str]] = set()
_forward_only: contextvars.ContextVar[bool] = contextvars.ContextVar("dfl_forward_only",
                                                                      default=False)


@contextlib.contextmanager
def forward_only() -> Iterator[None]:
  """Convolutions traced inside the block are never differentiated (evaluation): `auto`
  resolves to xla on every backend (module docstring)."""
  token = _forward_only.set(True)
  try:
    yield
  finally:
    _forward_only.reset(token)


def resolve_conv_impl(impl: str, backend: str | None = None) -> str:
  """'auto' -> 'im2col' on CPU, 'xla' on accelerators and under `forward_only()`; validates
  the name."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"Unknown convolution implementation model.conv={impl!r}; "
                     f"valid: {list(CONV_IMPLS)}.")
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  choice = "im2col" if backend == "cpu" and not _forward_only.get() else "xla"
  if (backend, choice) not in _logged:
    _logged.add((backend, choice))
    logging.info("dfl.layers: model.conv=auto -> %s on %s%s", choice, backend,
                 " (forward only: evaluation)" if _forward_only.get() else "")
  return choice


PADDINGS = ("SAME", "VALID")


def im2col(x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
           padding: str = "SAME") -> jax.Array:
  """[B, H, W, C] -> [B, H', W', kh*kw*C] ('SAME' or 'VALID' padding), ordered (dy, dx, c) like
  a flax kernel [kh, kw, C, F] reshaped to [kh*kw*C, F]."""
  (kh, kw), (sh, sw) = kernel_size, strides
  _, h, w, _ = x.shape
  (ph_lo, ph_hi), (pw_lo, pw_hi) = jax.lax.padtype_to_pads((h, w), (kh, kw), (sh, sw), padding)
  xp = jnp.pad(x, ((0, 0), (ph_lo, ph_hi), (pw_lo, pw_hi), (0, 0)))
  out_h = (h + ph_lo + ph_hi - kh) // sh + 1
  out_w = (w + pw_lo + pw_hi - kw) // sw + 1
  views = [xp[:, dy:dy + (out_h - 1) * sh + 1:sh, dx:dx + (out_w - 1) * sw + 1:sw, :]
           for dy in range(kh) for dx in range(kw)]
  return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


class Conv(nn.Module):
  """`nn.Conv` ('SAME' or 'VALID' padding), computed as `impl` says (see the module docstring)."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  use_bias: bool = True
  impl: str = "auto"
  padding: str = "SAME"
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    if self.padding not in PADDINGS:
      raise ValueError(f"Unknown Conv padding={self.padding!r}; valid: {list(PADDINGS)}.")
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
    if resolve_conv_impl(self.impl) == "im2col":
      y = im2col(x, (kh, kw), self.strides, self.padding) @ kernel.reshape(-1, self.features)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, tuple(self.strides), self.padding,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """`nn.max_pool(x, (2, 2), (2, 2))` ('VALID': an odd last row/column is dropped)."""
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2, :]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
