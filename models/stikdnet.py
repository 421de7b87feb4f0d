"""STIKDNet: the SEIFNet change detector trained by self-distillation against a perturbed t2 image.

Papers / code: STIKDNet (STILKDNet, repository cyl1238685387/STILKDNet, code of 2025-01-31; the paper PDF is
not public) trains SEIFNet (Y. Huang, X. Li, Z. Du, H. Shen, "Spatiotemporal Enhancement and Interlevel Fusion
Network for Remote Sensing Images Change Detection", IEEE TGRS 2024, code lixinghua5540/SEIFNet) with a
self-distillation objective. Spec: ``shared/specs/stikdnet.md``.

Architecture (SEIFNet, spec §2):
- **Encoder**: Siamese ResNet-18 (7×7/2 stem, BN, ReLU, 3×3/2 max-pool, BasicBlock stages [2, 2, 2, 2]) applied
  to t1 and t2 with shared weights; the four stage outputs x1..x4 (64/128/256/512 ch, strides 4..32).
- **ST-DEM** (``CoDEM2``), one per level: D = z_d + z_c with z_d = |x1 − x2| · a_h · a_w (coordinate attention
  on the absolute difference, reduction 16, m = max(8, C/16), h-swish) and z_c = ReLU(BN(1×1 conv 2C→C
  (ReLU(BN(3×3 conv 2C→2C (cat[x1, x2])))))).
- **Decoder**: refinement ``SAM(C)`` = CBAM (channel attention, shared MLP C→C/16 without bias on avg- and
  max-pooled vectors; spatial attention, 7×7 conv on [mean, max]) then 3×3 conv + BN + ReLU; gated fusion
  ``ACFF2(f_low, f_high)``: h = ReLU(BN(1×1 conv (bilinear ×2, align_corners=True, of f_high))),
  w = ChannelAttention(f_low + h), out = w·f_low + (1 − w)·h. P4 = SAM(D4), P3 = SAM(ACFF(D3, P4)),
  P2 = SAM(ACFF(D2, P3)), P1 = SAM(ACFF(D1, P2)).
- **Head** (summation): S = P1 + Σ_{l=2..4} 1×1 conv_l(P_l) brought to stride 4 (bilinear), then 1×1 conv 64→2
  and bilinear ×4 → 2-channel logits at input resolution.

Self-distillation (spec §4): in training mode the same network, same weights, runs twice — on the clean pair
(t1, t2) ("teacher") and on (t1, perturb(t2)) ("student", :mod:`models.perturbation`). ``forward`` returns
``{"logits": teacher, "student_logits": student}`` (+ ``"features"`` / ``"student_features"`` = the ST-DEM
outputs D1..D4 of both passes when ``feature_distillation``); :class:`models.losses.stikd.StikdLoss` combines
them. In eval mode only the clean pass runs (``{"logits"}``): the deployed network is exactly SEIFNet.

Deliberate differences from the original code:
- **B1, initialisation**: the original loaded ImageNet ResNet-18 weights and then re-initialised *every* module
  with N(0, 0.02) (BN weights N(1, 0.02)), destroying them. ``init="reference"`` reproduces that init;
  ``init="default"`` (default) uses torchvision's ResNet init (He fan-out, BN = identity) for the encoder and
  PyTorch defaults elsewhere, and ``encoder_weights`` loads a local torchvision-layout ResNet-18 state dict
  (``conv1``, ``bn1``, ``layer1..4``; ``fc.*`` ignored; nothing is downloaded, a missing file is an error).
  ``init="reference"`` with ``encoder_weights`` is refused (the weights would be silently discarded).
- **B2, perturbation**: done inside the model in [0, 1] space with per-sample draws (``perturbation`` option;
  ``{"mode": "reference"}`` reproduces the original's [−1, 1] clamping and one draw per batch).
- **B3, KD target** and label-255 handling: in the loss (:mod:`models.losses.stikd`).
- **Per-sample perturbation parameters** instead of one draw per batch (the original used batch size 1, where
  both are the same).
- **The t1 features are computed once** and reused by the perturbed pass (the original ran the whole network
  twice). t1 is identical in both passes and the network has no dropout, so outputs and gradients are the same;
  only BatchNorm's running averages see t1 once instead of twice per step.
- ``student_bn_update=False`` (option; default True = the original) keeps the perturbed pass from updating
  the BatchNorm running statistics (it still normalises with its batch statistics), so eval-time statistics
  describe clean images only (spec §11).
- **Head 1×1 convs before the upsampling**: mathematically identical (bilinear weights sum to 1, both linear),
  16–64× cheaper.
- **Any size and band count**: inputs are replicate-padded at the bottom/right to a multiple of 32 and the
  output is cropped back; ``t1_channels`` ≠ ``t2_channels`` (e.g. optical vs SAR) gets a separate stem (7×7
  conv + BN) for t2 while every later encoder layer stays shared, since one weight-shared conv cannot take two
  band counts. The perturbation applies saturation/hue only to 3-band t2 images.
- Dead modules of the original (ResNet avgpool/fc, the unused ``TwoLayerConv2d`` classifier) are not built.
- The CBAM spatial-attention 7×7 conv has no bias (the usual CBAM code; the original's bias is not recorded in
  the spec).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.weights import read_state_dict

from .base import ChangeModel, check_input, pad_to_multiple
from .perturbation import PerturbationConfig, perturb
from .registry import register
from .resnet import BasicBlock

InitMode = Literal["reference", "default"]
_STAGES = (64, 128, 256, 512)


class ResNet18Encoder(nn.Module):
    """torchvision-layout ResNet-18 returning ``[layer1, layer2, layer3, layer4]`` (strides 4, 8, 16, 32).

    With ``t2_channels`` ≠ ``t1_channels`` the t2 date has its own stem (``conv1_t2``, ``bn1_t2``); every
    other layer is shared. ``forward(x, date)``: date 0 = t1, 1 = t2.
    """

    def __init__(self, t1_channels: int = 3, t2_channels: int = 3) -> None:
        super().__init__()
        for name, c in (("t1_channels", t1_channels), ("t2_channels", t2_channels)):
            if c < 1:
                raise ValueError(f"{name} must be ≥ 1, got {c}")
        self.t1_channels, self.t2_channels = t1_channels, t2_channels
        self.conv1 = nn.Conv2d(t1_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.separate_stem = t1_channels != t2_channels
        if self.separate_stem:
            self.conv1_t2 = nn.Conv2d(t2_channels, 64, 7, 2, 3, bias=False)
            self.bn1_t2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        stages = []
        for i, planes in enumerate(_STAGES):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = list(_STAGES)

    def forward(self, x: Tensor, date: int = 0) -> list[Tensor]:
        if date == 1 and self.separate_stem:
            x = self.bn1_t2(self.conv1_t2(x))
        else:
            x = self.bn1(self.conv1(x))
        x = self.maxpool(self.relu(x))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [c1, c2, c3, self.layer4(c3)]

    def load_pretrained(self, path: str | Path) -> None:
        """Load a local torchvision ResNet-18 state dict (``fc.*`` ignored; every encoder tensor required).

        A first conv with another band count is adapted by averaging its filters over the input bands,
        repeating and rescaling by (checkpoint bands / own bands); the t2 stem is initialised the same way.
        """
        state = read_state_dict(path, what="encoder weights")
        own = self.state_dict()
        source = {k: k.replace("conv1_t2", "conv1").replace("bn1_t2", "bn1") for k in own}
        missing = [k for k in own if source[k] not in state]
        if missing:
            raise ValueError(f"{path}: not a ResNet-18 checkpoint, missing {missing[:5]}")
        new = {}
        for k, v in own.items():
            src = state[source[k]]
            if k in ("conv1.weight", "conv1_t2.weight") and src.shape != v.shape and src.shape[0] == v.shape[0]:
                src = src.mean(dim=1, keepdim=True).repeat(1, v.shape[1], 1, 1) * (src.shape[1] / v.shape[1])
            if src.shape != v.shape:
                raise ValueError(f"{path}: {source[k]} has shape {tuple(src.shape)}, expected {tuple(v.shape)}")
            new[k] = src
        self.load_state_dict(new, strict=True)


class HSwish(nn.Module):
    """x · ReLU6(x + 3) / 6."""

    def forward(self, x: Tensor) -> Tensor:
        return x * F.relu6(x + 3.0) / 6.0


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021) returning the two attention maps (a_h [N,C,H,1], a_w [N,C,1,W])."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        mid = max(8, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act = HSwish()
        self.conv_h = nn.Conv2d(mid, channels, 1)
        self.conv_w = nn.Conv2d(mid, channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, w = x.shape[-2:]
        x_h = x.mean(dim=3, keepdim=True)  # [N, C, H, 1]
        x_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # [N, C, W, 1]
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        return self.conv_h(y_h).sigmoid(), self.conv_w(y_w.transpose(2, 3)).sigmoid()


class STDEM(nn.Module):
    """Spatio-temporal difference enhancement (SEIFNet's ``CoDEM2``): z_d + z_c, C channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(2 * channels)
        self.conv1 = nn.Conv2d(2 * channels, channels, 1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.coord = CoordinateAttention(channels, reduction=16)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        d = (x1 - x2).abs()
        z_c = F.relu(self.bn2(self.conv1(F.relu(self.bn1(self.conv3(torch.cat([x1, x2], dim=1)))))))
        a_h, a_w = self.coord(d)
        return d * a_h * a_w + z_c


class ChannelAttention(nn.Module):
    """σ(MLP(avgpool x) + MLP(maxpool x)), shared bias-free MLP C→C/ratio→C; returns [N, C, 1, 1] weights."""

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        avg = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        mx = self.fc2(F.relu(self.fc1(F.adaptive_max_pool2d(x, 1))))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """σ(7×7 conv([channel mean, channel max])), [N, 1, H, W] weights."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class RefineModule(nn.Module):
    """SEIFNet's ``SupervisedAttentionModule``: CBAM (channel then spatial attention) + 3×3 conv-BN-ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ca = ChannelAttention(channels, 16)
        self.sa = SpatialAttention(7)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.ca(x)
        x = x * self.sa(x)
        return self.conv(x)


class ACFF(nn.Module):
    """Adaptive gated fusion (SEIFNet's ``ACFF2`` / ACFM) of f_low (C_L) and f_high (C_H, half resolution)."""

    def __init__(self, low_channels: int, high_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(high_channels, low_channels, 1)
        self.bn = nn.BatchNorm2d(low_channels)
        self.ca = ChannelAttention(low_channels, 16)

    def forward(self, f_low: Tensor, f_high: Tensor) -> Tensor:
        up = F.interpolate(f_high, size=f_low.shape[-2:], mode="bilinear", align_corners=True)
        h = F.relu(self.bn(self.conv(up)))
        w = self.ca(f_low + h)
        return f_low * w + h * (1.0 - w)


def _upsample(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    return x if x.shape[-2:] == tuple(size) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@contextlib.contextmanager
def frozen_bn_statistics(module: nn.Module) -> Iterator[None]:
    """Inside: BatchNorm layers still normalise with batch statistics but leave their running averages alone."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum))
            m.momentum = 0.0  # running = (1 − 0)·running + 0·batch
    try:
        yield
    finally:
        for m, momentum in saved:
            m.momentum = momentum


@register("stikdnet")
class STIKDNet(ChangeModel):
    """SEIFNet with STIKDNet's self-distillation forward; see the module docstring.

    Args:
        t1_channels, t2_channels: bands per date (may differ: separate t2 stem).
        init: "default" (torchvision ResNet init) or "reference" (the original's N(0, 0.02) re-init of every
            conv/linear and N(1, 0.02) BN weights, bug B1).
        encoder_weights: optional local torchvision-layout ResNet-18 state dict for the encoder.
        perturbation: a :class:`~models.perturbation.PerturbationConfig`, a preset name ("strong", "weak") or a
            dict of its fields (e.g. ``{"mode": "reference"}``); default "strong".
        self_distillation: in training mode also run the perturbed-t2 pass (False: plain SEIFNet training).
        feature_distillation: also return the ST-DEM outputs D1..D4 of both passes.
        student_bn_update: let the perturbed pass update BatchNorm running statistics (True = original).

    ``forward(t1 [N,C1,H,W], t2 [N,C2,H,W]) -> dict``: eval → ``{"logits"}``; training with self-distillation →
    also ``"student_logits"`` (and ``"features"``, ``"student_features"``: lists of 4 tensors, cropped to
    ceil(H/s) × ceil(W/s) at strides s = 4, 8, 16, 32).
    """

    default_loss = "stikd"

    def __init__(
        self,
        t1_channels: int = 3,
        t2_channels: int = 3,
        init: InitMode = "default",
        encoder_weights: str | Path | None = None,
        perturbation: PerturbationConfig | Mapping[str, Any] | str | None = None,
        self_distillation: bool = True,
        feature_distillation: bool = False,
        student_bn_update: bool = True,
    ) -> None:
        super().__init__()
        if init not in ("reference", "default"):
            raise ValueError(f"init must be 'reference' or 'default', got {init!r}")
        if init == "reference" and encoder_weights is not None:
            raise ValueError(
                "init='reference' re-initialises every weight (the original's bug B1), which would discard "
                "encoder_weights; use init='default' with encoder_weights"
            )
        self.t1_channels, self.t2_channels = t1_channels, t2_channels
        self.init = init
        self.perturbation = PerturbationConfig.from_any(perturbation)
        self.self_distillation = self_distillation
        self.feature_distillation = feature_distillation
        self.student_bn_update = student_bn_update
        self.encoder = ResNet18Encoder(t1_channels, t2_channels)
        c = _STAGES
        self.stdem = nn.ModuleList(STDEM(ch) for ch in c)
        self.refine = nn.ModuleList(RefineModule(ch) for ch in c)
        self.fuse = nn.ModuleList(ACFF(c[i], c[i + 1]) for i in range(3))
        self.project = nn.ModuleList(nn.Conv2d(ch, c[0], 1) for ch in c[1:])  # P2, P3, P4 → 64
        self.classifier = nn.Conv2d(c[0], self.num_classes, 1)
        self.reset_parameters()
        if encoder_weights is not None:
            self.encoder.load_pretrained(encoder_weights)

    @property
    def in_channels(self) -> tuple[int, int]:
        return (self.t1_channels, self.t2_channels)

    def reset_parameters(self) -> None:
        """Apply the ``init`` scheme to every module (see the class docstring)."""
        for m in self.modules():
            if self.init == "reference":
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.normal_(m.weight, 1.0, 0.02)
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.init == "default":
            for m in self.encoder.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _decode(self, f1: list[Tensor], f2: list[Tensor], size: torch.Size) -> tuple[Tensor, list[Tensor]]:
        """ST-DEM, progressive decoder and head on one pair of feature pyramids; logits at ``size`` (padded)."""
        d = [m(a, b) for m, a, b in zip(self.stdem, f1, f2)]
        p = [torch.empty(0)] * 4
        p[3] = self.refine[3](d[3])
        for i in (2, 1, 0):
            p[i] = self.refine[i](self.fuse[i](d[i], p[i + 1]))
        s = p[0]
        for i in (1, 2, 3):
            s = s + _upsample(self.project[i - 1](p[i]), p[0].shape[-2:])
        return _upsample(self.classifier(s), size), d

    def _pass(self, f1: list[Tensor], t2: Tensor, hw: tuple[int, int]) -> tuple[Tensor, list[Tensor]]:
        x2, _ = pad_to_multiple(t2, 32)
        f2 = self.encoder(x2, 1)
        logits, d = self._decode(f1, f2, x2.shape[-2:])
        h, w = hw
        feats = [x[..., : math.ceil(h / s), : math.ceil(w / s)] for x, s in zip(d, (4, 8, 16, 32))]
        return logits[..., :h, :w], feats

    def forward(self, t1: Tensor, t2: Tensor) -> dict[str, Any]:
        check_input(t1, self.t1_channels, "STIKDNet t1")
        check_input(t2, self.t2_channels, "STIKDNet t2")
        if t1.shape[-2:] != t2.shape[-2:] or t1.shape[0] != t2.shape[0]:
            raise ValueError(f"STIKDNet: t1 is {tuple(t1.shape)} but t2 is {tuple(t2.shape)}")
        hw = (t1.shape[-2], t1.shape[-1])
        x1, _ = pad_to_multiple(t1, 32)
        f1 = self.encoder(x1, 0)
        logits, feats = self._pass(f1, t2, hw)
        out: dict[str, Any] = {"logits": logits}
        if not (self.training and self.self_distillation):
            return out
        t2_perturbed = perturb(t2, self.perturbation)
        bn = contextlib.nullcontext() if self.student_bn_update else frozen_bn_statistics(self)
        with bn:
            student_logits, student_feats = self._pass(f1, t2_perturbed, hw)
        out["student_logits"] = student_logits
        if self.feature_distillation:
            out["features"] = feats
            out["student_features"] = student_feats
        return out
