"""CIFAR models with GroupNorm: VGG-11 (Simonyan & Zisserman, ICLR 2015) and ResNet-18 (He et
al., CVPR 2016, the CIFAR variant: 3x3 stem, no max-pool), as used by the DFedSAM experiments.

Why GroupNorm (Wu & He, ECCV 2018) instead of BatchNorm: BatchNorm keeps running statistics, a
second, non-trainable state that every node would carry, that gossip would have to average
(averaging variances of different nodes' data is not the variance of anything) and that turns
`apply` into a stateful call with train/eval modes. Its batch statistics are also computed from
one node's label-skewed minibatch, which is known to hurt non-IID federated training (Hsieh et
al., "The Non-IID Data Quagmire", ICML 2020). GroupNorm normalises each sample on its own,
has only trainable scale/bias, and so keeps a model a plain parameter pytree: vmapped per-node
training, gossip and evaluation treat it like any other model. `NORM_GROUPS` = 32 (Wu & He's
default); every channel width here (64..512) is divisible by it. Param counts (CIFAR-10):
VGG-11 9,231,114, ResNet-18 11,173,962. No dropout.

`model.norm=batch` swaps every GroupNorm for BatchNorm (`VGGBatchNorm`, `ResNetBatchNorm`), the
normalisation of DisPFL's vgg.py with batch_norm=True and of torchvision's ResNet: torch's
defaults, momentum 0.1 (flax momentum 0.9: running = 0.9 running + 0.1 batch) and eps 1e-5,
scale 1 and bias 0 at init. These models follow the stateful contract of dfl/model_state.py:
`__call__(x, train=False, mask=None)`, the [B] lane mask keeping the padding lanes of a short
batch out of the statistics. Their parameters are the GroupNorm models' (same names apart from
the norm layers', same counts). flax's BatchNorm keeps the biased batch variance in its running
average, torch the unbiased one.

VGG-11 follows DisPFL's fedml_api/model/cv/vgg.py (rong-dai/DisPFL; the same file is in
EricLoong/da-dpfl, whose DFedSAM scripts train it), the model of the DFedSAM lineage: each
3x3 conv (padding 1 = 'SAME') has a bias and is followed by GroupNorm(32) and ReLU, 'M' is a
2x2 max-pool, and the head is ONE linear layer 512 -> classes (no 512-512 hidden layers; its
AvgPool2d(1) is the identity). Initialisation as its `_initialize_weights`: conv kernels
Kaiming normal, fan_out mode, gain sqrt(2) (std sqrt(2 / (Cout·3·3))), conv biases 0, GroupNorm
scale 1 and bias 0, the linear kernel N(0, 0.01²) and bias 0. Deviation: none in shapes; flax's
fan_out of a [kh, kw, Cin, Cout] kernel is kh·kw·Cout, torch's for [Cout, Cin, kh, kw] the same.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax

from dfl.layers import Conv, max_pool_2x2

NORM_GROUPS = 32
NORMS = ("group", "batch")
BN_MOMENTUM = 0.9  # torch's momentum 0.1
BN_EPSILON = 1e-5


def batch_norm(train: bool, mask: Optional[jax.Array]) -> Callable:
  """norm(x) -> BatchNorm(x), its statistics over the lanes where mask [B] is True."""
  def norm(x):
    lane_mask = None if mask is None else mask.reshape((-1,) + (1,) * (x.ndim - 1))
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                        epsilon=BN_EPSILON)(x, mask=lane_mask)
  return norm


def _vgg(x, layers, num_classes: int, conv: str, norm: Callable):
  kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  for layer in layers:
    if layer == "M":
      x = max_pool_2x2(x)
    else:
      x = nn.relu(norm(Conv(layer, (3, 3), impl=conv, kernel_init=kaiming_fan_out)(x)))
  x = x.reshape(x.shape[0], -1)  # [B, 512] after five pools of a 32x32 image
  return nn.Dense(num_classes, kernel_init=nn.initializers.normal(0.01))(x)
# VGG-11 ("A"): conv widths, "M" = 2x2 max-pool.
VGG11_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
  """VGG for 32x32 inputs: 3x3 conv (with bias) + GroupNorm + ReLU blocks, then a 512 -> classes
  linear head, initialised as DisPFL's vgg.py (see the module docstring)."""
  layers: Sequence = VGG11_LAYERS
  num_classes: int = 10
  groups: int = NORM_GROUPS
  conv: str = "auto"  # dfl.layers.Conv: auto | xla | im2col

  @nn.compact
  def __call__(self, x):
    return _vgg(x, self.layers, self.num_classes, self.conv,
                lambda h: nn.GroupNorm(num_groups=self.groups)(h))


class VGGBatchNorm(VGG):
  """VGG with BatchNorm after every conv (model.norm=batch); stateful (module docstring)."""

  @nn.compact
  def __call__(self, x, train: bool = False, mask: Optional[jax.Array] = None):
    return _vgg(x, self.layers, self.num_classes, self.conv, batch_norm(train, mask))


class BasicBlock(nn.Module):
  """Two 3x3 convs with GroupNorm (or BatchNorm); a 1x1 projection on the shortcut when the
  shape changes."""
  features: int
  stride: int = 1
  groups: int = NORM_GROUPS
  conv: str = "auto"
  norm: str = "group"

  @nn.compact
  def __call__(self, x, train: bool = False, mask: Optional[jax.Array] = None):
    if self.norm == "batch":
      norm = lambda: batch_norm(train, mask)
    else:
      norm = lambda: nn.GroupNorm(num_groups=self.groups)
    conv = lambda k, s: Conv(self.features, (k, k), (s, s), use_bias=False, impl=self.conv)
    y = nn.relu(norm()(conv(3, self.stride)(x)))
    y = norm()(conv(3, 1)(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = norm()(conv(1, self.stride)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet for 32x32 inputs: 3x3 stem, four stages of BasicBlocks, global average pool."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_classes: int = 10
  groups: int = NORM_GROUPS
  conv: str = "auto"

  @nn.compact
  def __call__(self, x):
    stem = Conv(64, (3, 3), use_bias=False, impl=self.conv)
    x = nn.relu(nn.GroupNorm(num_groups=self.groups)(stem(x)))
    for stage, blocks in enumerate(self.stage_sizes):
      for b in range(blocks):
        stride = 2 if stage > 0 and b == 0 else 1
        x = BasicBlock(64 * 2**stage, stride, self.groups, self.conv)(x)
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class ResNetBatchNorm(ResNet):
  """ResNet with BatchNorm in place of GroupNorm (model.norm=batch); stateful."""

  @nn.compact
  def __call__(self, x, train: bool = False, mask: Optional[jax.Array] = None):
    stem = Conv(64, (3, 3), use_bias=False, impl=self.conv)
    x = nn.relu(batch_norm(train, mask)(stem(x)))
    for stage, blocks in enumerate(self.stage_sizes):
      for b in range(blocks):
        stride = 2 if stage > 0 and b == 0 else 1
        x = BasicBlock(64 * 2**stage, stride, self.groups, self.conv, "batch")(x, train, mask)
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def vgg11(num_classes: int, conv: str = "auto", norm: str = "group", **_) -> nn.Module:
  cls = VGGBatchNorm if norm == "batch" else VGG
  return cls(VGG11_LAYERS, num_classes, conv=conv)


def resnet18(num_classes: int, conv: str = "auto", norm: str = "group", **_) -> nn.Module:
  cls = ResNetBatchNorm if norm == "batch" else ResNet
  return cls((2, 2, 2, 2), num_classes, conv=conv)
