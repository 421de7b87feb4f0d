"""FC-EF, FC-Siam-conc and FC-Siam-diff baselines.

Paper: R. Caye Daudt, B. Le Saux, A. Boulch, "Fully Convolutional Siamese Networks for Change Detection",
ICIP 2018 (reference code rcdaudt/fully_convolutional_change_detection).

All three are 4-level U-Nets (16/32/64/128 channels; 2, 2, 3, 3 convs per level; every conv followed by BN,
ReLU and Dropout2d(0.2); transposed-conv upsampling; skip connections):
- FC-EF (early fusion): the two dates are concatenated on the channel axis and fed to one U-Net;
- FC-Siam-conc: each date goes through the encoder; the decoder receives the upsampled features concatenated
  with *both* dates' skip features;
- FC-Siam-diff: as FC-Siam-conc but the skip is ``|skip_t1 − skip_t2|``.

Heterogeneous pairs (band counts ``t1_channels`` ≠ ``t2_channels``, e.g. 4-band optical vs 2-pol SAR): FC-EF
simply concatenates ``t1_channels + t2_channels`` bands. A weight-shared Siamese encoder cannot take two band
counts, so the Siamese variants have ``siamese`` modes:
- ``"shared"`` (the paper; only when the band counts match): one encoder for both dates;
- ``"stem"`` (default for unequal band counts): a first conv block per date maps each date's bands to 16
  channels, every later layer is shared. The per-date stem acts as a modality adapter while the shared body
  keeps both dates in one feature space, which the difference of FC-Siam-diff needs to be meaningful;
- ``"pseudo"``: two fully separate encoders (pseudo-Siamese), the usual choice for optical/SAR pairs when
  there is enough data; about 1.7× the encoder parameters.

Deliberate differences from the original code:
- sizes not divisible by 16 are replicate-padded at the bottom/right and cropped back (the original pads each
  upsampled map to its skip size), so the output is always exactly ``[N, 2, H, W]``;
- the output is raw logits in a dict (``{"logits": ...}``), not LogSoftmax, so every model in the registry
  is used the same way;
- arbitrary band counts per date and the ``siamese`` modes above.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

import torch
from torch import Tensor, nn

from .base import ChangeModel, check_input, pad_to_multiple
from .registry import register

SiameseMode = Literal["shared", "stem", "pseudo"]
_WIDTHS = (16, 32, 64, 128)
_DEPTHS = (2, 2, 3, 3)


def conv_block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    """3×3 conv → BN → ReLU → Dropout2d, the unit of every FC layer."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.Dropout2d(dropout)
    )


class FCEncoderBody(nn.Module):
    """Encoder after the first conv: returns the 4 skip features (before pooling) and the bottleneck."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        cin = _WIDTHS[0]
        for i, (w, d) in enumerate(zip(_WIDTHS, _DEPTHS)):
            # Level 1's first conv is the stem (kept outside so it can be per-date).
            n = d - 1 if i == 0 else d
            layers = []
            for _ in range(n):
                layers.append(conv_block(cin, w, dropout))
                cin = w
            self.levels.append(nn.Sequential(*layers))
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        skips = []
        for level in self.levels:
            x = level(x)
            skips.append(x)
            x = self.pool(x)
        return skips, x


class FCDecoder(nn.Module):
    """U-Net decoder; ``skip_mult`` = how many skip tensors are concatenated per level (1 or 2)."""

    def __init__(self, skip_mult: int, dropout: float, num_classes: int = 2) -> None:
        super().__init__()
        self.up = nn.ModuleList()
        self.levels = nn.ModuleList()
        for i in reversed(range(4)):
            w = _WIDTHS[i]
            self.up.append(nn.ConvTranspose2d(w, w, 3, stride=2, padding=1, output_padding=1))
            out = _WIDTHS[i - 1] if i > 0 else _WIDTHS[0]
            cin = w + skip_mult * w
            layers = []
            for j in range(_DEPTHS[i]):
                last = j == _DEPTHS[i] - 1
                cout = out if last else w
                if i == 0 and last:
                    layers.append(nn.Conv2d(cin, num_classes, 3, padding=1))
                else:
                    layers.append(conv_block(cin, cout, dropout))
                cin = cout
            self.levels.append(nn.Sequential(*layers))

    def forward(self, x: Tensor, skips: list[Tensor]) -> Tensor:
        for up, level, skip in zip(self.up, self.levels, reversed(skips)):
            x = level(torch.cat([up(x), skip], dim=1))
        return x


class _FCBase(ChangeModel):
    def __init__(self, t1_channels: int, t2_channels: int | None) -> None:
        super().__init__()
        self.t1_channels = t1_channels
        self.t2_channels = t1_channels if t2_channels is None else t2_channels

    @property
    def in_channels(self) -> tuple[int, int]:
        return (self.t1_channels, self.t2_channels)


@register("fc_ef")
class FCEF(_FCBase):
    """FC-EF (Daudt et al., ICIP 2018): early fusion U-Net on the band-wise concatenation of both dates.

    Args:
        t1_channels: bands at t1. t2_channels: bands at t2 (default: same as t1; may differ).
        dropout: Dropout2d probability after every conv (0.2 in the paper's code).

    ``forward(t1 [N,C1,H,W], t2 [N,C2,H,W]) -> {"logits": [N,2,H,W]}``. See the module docstring for the
    differences from the original code.
    """

    def __init__(self, t1_channels: int = 3, t2_channels: int | None = None, dropout: float = 0.2) -> None:
        super().__init__(t1_channels, t2_channels)
        self.stem = conv_block(self.t1_channels + self.t2_channels, _WIDTHS[0], dropout)
        self.body = FCEncoderBody(dropout)
        self.decoder = FCDecoder(1, dropout)

    def forward(self, t1: Tensor, t2: Tensor) -> dict[str, Tensor]:
        check_input(t1, self.t1_channels, "FC-EF t1")
        check_input(t2, self.t2_channels, "FC-EF t2")
        x, (h, w) = pad_to_multiple(torch.cat([t1, t2], dim=1), 16)
        skips, bottom = self.body(self.stem(x))
        return {"logits": self.decoder(bottom, skips)[..., :h, :w]}


class _FCSiamese(_FCBase):
    skip_mult = 2

    def __init__(
        self,
        t1_channels: int = 3,
        t2_channels: int | None = None,
        siamese: SiameseMode | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(t1_channels, t2_channels)
        same = self.t1_channels == self.t2_channels
        mode = siamese or ("shared" if same else "stem")
        if mode not in ("shared", "stem", "pseudo"):
            raise ValueError(f"siamese must be 'shared', 'stem' or 'pseudo', got {mode!r}")
        if mode == "shared" and not same:
            raise ValueError(
                f"siamese='shared' needs equal band counts, got t1={self.t1_channels}, t2={self.t2_channels}; "
                "use 'stem' or 'pseudo'"
            )
        self.siamese = mode
        chans = [self.t1_channels] if mode == "shared" else [self.t1_channels, self.t2_channels]
        self.stems = nn.ModuleList(conv_block(c, _WIDTHS[0], dropout) for c in chans)
        self.bodies = nn.ModuleList(FCEncoderBody(dropout) for _ in range(2 if mode == "pseudo" else 1))
        self.decoder = FCDecoder(self.skip_mult, dropout)

    def _encode(self, x: Tensor, date: int) -> tuple[list[Tensor], Tensor]:
        stem = self.stems[min(date, len(self.stems) - 1)]
        body = self.bodies[min(date, len(self.bodies) - 1)]
        return body(stem(x))

    @abstractmethod
    def _merge(self, s1: Tensor, s2: Tensor) -> Tensor:
        """How the two dates' skip features are combined (concatenation or absolute difference)."""

    def forward(self, t1: Tensor, t2: Tensor) -> dict[str, Tensor]:
        name = type(self).__name__
        check_input(t1, self.t1_channels, f"{name} t1")
        check_input(t2, self.t2_channels, f"{name} t2")
        x1, (h, w) = pad_to_multiple(t1, 16)
        x2, _ = pad_to_multiple(t2, 16)
        skips1, _ = self._encode(x1, 0)
        skips2, bottom2 = self._encode(x2, 1)
        skips = [self._merge(a, b) for a, b in zip(skips1, skips2)]
        # As in the paper's code, the decoder starts from the t2 bottleneck (the t1 one is not used).
        return {"logits": self.decoder(bottom2, skips)[..., :h, :w]}


@register("fc_siam_conc")
class FCSiamConc(_FCSiamese):
    """FC-Siam-conc (Daudt et al., ICIP 2018): Siamese encoder, decoder skips = concat of both dates.

    Args:
        t1_channels, t2_channels: bands per date (may differ).
        siamese: "shared" (paper, equal bands), "stem" (per-date first conv, default if bands differ) or
            "pseudo" (separate encoders). See the module docstring.
        dropout: Dropout2d probability (0.2).

    ``forward(t1, t2) -> {"logits": [N,2,H,W]}``.
    """

    skip_mult = 2

    def _merge(self, s1: Tensor, s2: Tensor) -> Tensor:
        return torch.cat([s1, s2], dim=1)


@register("fc_siam_diff")
class FCSiamDiff(_FCSiamese):
    """FC-Siam-diff (Daudt et al., ICIP 2018): Siamese encoder, decoder skips = |skip_t1 − skip_t2|.

    Args as :class:`FCSiamConc`. ``forward(t1, t2) -> {"logits": [N,2,H,W]}``.
    """

    skip_mult = 1

    def _merge(self, s1: Tensor, s2: Tensor) -> Tensor:
        return (s1 - s2).abs()
