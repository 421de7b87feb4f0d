"""Deep-stem ResNet-18 encoder (the "ResNet-18 v1c"-style backbone of the MIT CSAIL segmentation code).

What: a ResNet-18 whose 7×7 stem is replaced by three 3×3 convolutions (64, 64, 128 channels, the first with
stride 2) followed by a 3/2 max-pool; then BasicBlock stages [2, 2, 2, 2] of 64/128/256/512 channels starting
from 128 input planes (so layer1's first block has a 1×1 projection). It returns the features at strides
4, 8, 16 and 32 (layer1..layer4), which is what GOLD's multi-scale fusion consumes.

Why: GOLD (Yan, "Guided Online Learning for Distillation for heterogeneous remote-sensing change detection",
code Mriris/HeteroCD-GOLD, ``models/resnet.py``) uses exactly this backbone (He et al., CVPR 2016, with the
deep stem of Zhou et al., "Scene Parsing through ADE20K", CVPR 2017). ``width`` scales every channel count,
which gives the half-width encoder of the lightweight GOLD.

Differences from the original code (deliberate):
- any number of input bands (``in_channels``), not only 3: GF-2 has 4 bands, GF-3 SAR 1–4 polarisations;
- pretrained weights are never downloaded: ``weights`` is a local path (a missing file is an error); a
  3-band checkpoint is adapted to ``in_channels`` ≠ 3 by averaging the RGB filters of the first conv;
- the dead FrequencySeparation / AdaIN code paths are not reproduced.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from models.weights import read_state_dict


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv-BN, identity (or 1×1 projection) shortcut, ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DeepStemResNet18(nn.Module):
    """Deep-stem ResNet-18 returning ``[layer1, layer2, layer3, layer4]`` (strides 4, 8, 16, 32).

    Args:
        in_channels: input bands.
        width: channel multiplier (1.0 = 64/128/256/512 stages; 0.5 = the lightweight GOLD encoder).
        weights: optional local path of a CSAIL-format ``resnet18-imagenet.pth`` (or any state dict with the
            same key names); loaded after random init.
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0, weights: str | Path | None = None) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be ≥ 1, got {in_channels}")
        c = [max(1, int(round(v * width))) for v in (64, 128, 256, 512)]
        self.in_channels = in_channels
        self.out_channels: list[int] = c
        # Attribute names follow the CSAIL checkpoint so its weights load by name.
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c[0], c[0], 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c[0])
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(c[0], c[1], 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c[1])
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = c[1]
        stages = []
        for i, planes in enumerate(c):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.reset_parameters()
        if weights is not None:
            self.load_pretrained(weights)

    def reset_parameters(self) -> None:
        """He (fan-out) init for convs, BN to identity — the init of the original backbone."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]

    def load_pretrained(self, path: str | Path) -> None:
        """Load encoder weights from a local file; every encoder tensor must be present.

        Extra keys (the classifier ``fc.*``) are ignored. If the checkpoint's first conv has 3 input channels
        and this encoder has another number, the filters are replaced by their channel mean, repeated and
        rescaled by 3 / in_channels so activations keep their magnitude.
        """
        state = read_state_dict(path, what="encoder weights")
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(f"{path}: not a deep-stem ResNet-18 checkpoint, missing {missing[:5]}...")
        new = {}
        for k, v in own.items():
            src = state[k]
            if k == "conv1.weight" and src.shape != v.shape and src.shape[0] == v.shape[0]:
                src = src.mean(dim=1, keepdim=True).repeat(1, v.shape[1], 1, 1) * (src.shape[1] / v.shape[1])
            if src.shape != v.shape:
                raise ValueError(f"{path}: {k} has shape {tuple(src.shape)}, expected {tuple(v.shape)}")
            new[k] = src
        self.load_state_dict(new, strict=True)
