"""EfficientNet-B0 encoder in plain torch (the lukemelas ``efficientnet_pytorch`` variant used by smp).

Paper: M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019.
ClearSCD (Tang et al., ISPRS J. 2024; spec ``clearscd.md`` §2.1) uses smp's ``EfficientNetEncoder('efficientnet-b0')``,
which wraps ``efficientnet_pytorch.EfficientNet`` (L. Melas-Kyriazi). This module rebuilds that network:

- stem: 3×3 conv stride 2 (3→32, no bias) → BN → swish;
- 16 MBConv blocks in 7 stages (repeats 1,2,2,3,3,4,1; kernels 3,3,5,3,5,5,3; strides 1,2,2,2,1,2,1; expansion
  1,6,6,6,6,6,6; outputs 16,24,40,80,112,192,320): [1×1 expand conv → BN → swish] → depthwise k×k conv → BN →
  swish → squeeze-excitation (reduce to max(1, ⌊0.25·block input channels⌋), swish, expand, sigmoid gate) →
  1×1 project conv → BN; identity skip with drop-connect when stride 1 and in == out;
- drop-connect rate 0.2·i/16 for block i = 0..15 (smp's linear schedule over the blocks), per sample;
- BatchNorm momentum 0.01 (TF's 0.99), eps 1e-3; swish = x·sigmoid(x);
- TensorFlow "same" padding: stride-1 convs pad k//2 on each side, stride-2 convs pad the extra pixel at the
  bottom/right (identical to the original's static padding for even input sizes, and defined for any size).

``forward(x) -> [x, s2, s4, s8, s16, s32]``: the 6 feature maps of smp (strides 1, 2, 4, 8, 16, 32, channels
``in_channels, 32, 24, 40, 112, 320``; stage ends after blocks 3, 5, 9, 16). For odd sizes every stride-2 step
gives ⌈H/2⌉.

Deliberate differences from the original code:
- the classification head (1×1 conv 320→1280 + BN + FC) is not built: smp deletes only ``_fc`` and keeps
  ``_conv_head``/``_bn1`` as dead parameters (0.41 M), which inflates the parameter count;
- any number of input bands; a 3-band checkpoint is adapted to others by averaging the first conv's filters;
- ``weights`` is a local file (nothing is downloaded; a missing file is an error). It is *really* loaded —
  ClearSCD's ``_init_weighets`` never loaded its ImageNet weights (spec §8, bug P1). Accepted key layouts:
  lukemelas / smp (``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``..., with or without an
  ``encoder.`` prefix) and torchvision's ``efficientnet_b0`` (``features.S.B.block.I...``), mapped by position.
  (Torchvision pads stride-2 convs symmetrically, so its weights see a half-pixel different alignment here.)
- weights start from PyTorch's default init, as in the reference run (``pretrained=true`` skipped the Kaiming
  init of the encoder).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.weights import read_state_dict

# (repeats, kernel, stride, expand ratio, input channels, output channels) of EfficientNet-B0, SE ratio 0.25.
B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STAGE_ENDS = (3, 5, 9, 16)  # smp's _stage_idxs: feature maps after blocks[:3], [:5], [:9], [:16]
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (output ⌈H/stride⌉), computed from the input size at run time."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        h, w = x.shape[-2:]
        ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def drop_connect(x: Tensor, rate: float, training: bool) -> Tensor:
    """Drop whole residual branches per sample with probability ``rate``, rescaling the kept ones (stochastic depth)."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device))
    return x / keep * mask


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation; attribute names follow ``efficientnet_pytorch``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        self.has_skip = stride == 1 and cin == cout
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        squeezed = max(1, int(cin * se_ratio))
        self._se_reduce = nn.Conv2d(mid, squeezed, 1)
        self._se_expand = nn.Conv2d(squeezed, mid, 1)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)

    def forward(self, x: Tensor, drop_connect_rate: float = 0.0) -> Tensor:
        out = F.silu(self._bn0(self._expand_conv(x))) if self.expand else x
        out = F.silu(self._bn1(self._depthwise_conv(out)))
        gate = self._se_expand(F.silu(self._se_reduce(F.adaptive_avg_pool2d(out, 1))))
        out = torch.sigmoid(gate) * out
        out = self._bn2(self._project_conv(out))
        if self.has_skip:
            out = drop_connect(out, drop_connect_rate, self.training) + x
        return out


class EfficientNetB0Encoder(nn.Module):
    """EfficientNet-B0 feature extractor returning smp's 6 maps; see the module docstring.

    Args:
        in_channels: input bands.
        drop_connect_rate: maximum drop-connect rate (0.2), reached linearly over the 16 blocks.
        weights: optional local checkpoint (lukemelas/smp or torchvision key names).
    """

    def __init__(self, in_channels: int = 3, drop_connect_rate: float = 0.2, weights: str | Path | None = None) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be ≥ 1, got {in_channels}")
        self.in_channels = in_channels
        self.drop_connect_rate = drop_connect_rate
        self._conv_stem = SameConv2d(in_channels, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in B0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self.out_channels: list[int] = [in_channels, 32, 24, 40, 112, 320]
        if weights is not None:
            self.load_pretrained(weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [x]
        x = F.silu(self._bn0(self._conv_stem(x)))
        features.append(x)
        n = len(self._blocks)
        for i, block in enumerate(self._blocks):
            x = block(x, self.drop_connect_rate * i / n)
            if i + 1 in STAGE_ENDS:
                features.append(x)
        return features

    # ----------------------------------------------------------------------------------------------- weights
    def _torchvision_names(self) -> dict[str, str]:
        """Our parameter/buffer prefix → torchvision ``efficientnet_b0`` prefix."""
        names = {"_conv_stem": "features.0.0", "_bn0": "features.0.1"}
        index = 0
        for stage, (repeats, *_rest) in enumerate(B0_STAGES, start=1):
            expand = B0_STAGES[stage - 1][3] != 1
            for b in range(repeats):
                base, ours = f"features.{stage}.{b}.block", f"_blocks.{index}"
                order = ["_expand", "_dw", "_se", "_project"] if expand else ["_dw", "_se", "_project"]
                pos = {name: i for i, name in enumerate(order)}
                if expand:
                    names[f"{ours}._expand_conv"] = f"{base}.{pos['_expand']}.0"
                    names[f"{ours}._bn0"] = f"{base}.{pos['_expand']}.1"
                names[f"{ours}._depthwise_conv"] = f"{base}.{pos['_dw']}.0"
                names[f"{ours}._bn1"] = f"{base}.{pos['_dw']}.1"
                names[f"{ours}._se_reduce"] = f"{base}.{pos['_se']}.fc1"
                names[f"{ours}._se_expand"] = f"{base}.{pos['_se']}.fc2"
                names[f"{ours}._project_conv"] = f"{base}.{pos['_project']}.0"
                names[f"{ours}._bn2"] = f"{base}.{pos['_project']}.1"
                index += 1
        return names

    def load_pretrained(self, path: str | Path) -> None:
        """Load encoder weights from a local file; every encoder tensor must be present (head/FC keys ignored)."""
        state = {k.removeprefix("encoder."): v for k, v in read_state_dict(path, what="encoder weights").items()}
        own = self.state_dict()
        if "features.0.0.weight" in state and "_conv_stem.weight" not in state:
            mapping = self._torchvision_names()
            renamed = {}
            for key in own:
                prefix, leaf = key.rsplit(".", 1)
                source = f"{mapping[prefix]}.{leaf}"
                if source in state:
                    renamed[key] = state[source]
            state = renamed
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"{path}: not an EfficientNet-B0 checkpoint, missing {missing[:5]}...")
        new = {}
        for k, v in own.items():
            src = state.get(k, v)
            if k == "_conv_stem.weight" and src.shape != v.shape and src.shape[0] == v.shape[0]:
                src = src.mean(dim=1, keepdim=True).repeat(1, v.shape[1], 1, 1) * (src.shape[1] / v.shape[1])
            if src.shape != v.shape:
                raise ValueError(f"{path}: {k} has shape {tuple(src.shape)}, expected {tuple(v.shape)}")
            new[k] = src
        self.load_state_dict(new, strict=True)
