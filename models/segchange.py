"""SegChange-R1: text-guided binary change segmentation.

Paper: F. Zhou, "SegChange-R1: LLM-Augmented Remote Sensing Change Detection", arXiv 2506.17944 (code
Yu-Zhouz/SegChange-R1 at 441c3fb; spec: ../shared/specs/segchange.md). EGA block from arXiv 2503.14012.

Architecture (spec §1; the blocks are in :mod:`models.segchange_blocks`):
- **Siamese encoder**: one deep-stem ResNet-18 (:class:`models.resnet.DeepStemResNet18`, ``width`` scales it)
  applied to each date separately, 4 scales at strides 4/8/16/32, then a 1×1 conv (bias) per scale to ``dim``
  channels (256 in the original);
- **"BEV" module**: per scale a linear-attention token mixer shared by both dates and applied to each date
  independently (what the original code really does — no geometry, no cross-date interaction; §1.2);
- **feature difference** per scale: ``[f1, f2, |f1−f2|, f1⊙f2]`` → 1×1 → BN → ReLU → CBAM variant (or SE);
- **L-FPN**: per scale 3×3 → GN → ReLU → bilinear resize to the decoder size, concat, 1×1 to ``dim``; then
  **EGA** edge-Gaussian refinement;
- **mask head**: SE gate ``a`` on the fused map F; text (if any) gives a per-channel gain and a shift:
  ``F' = F ⊙ (a + gain) + shift`` (without text: ``F' = F ⊙ a``); a 5-query 2-layer transformer decoder (text
  free) gives a global vector g, broadcast and concatenated: ``[F', g]`` → 1×1 (2C → C/2) → GN → ReLU → 3×3
  (C/2 → C/4) → GN → ReLU → 1×1 → 2 logits; logits upsampled to the input size.

``forward(t1, t2, text=None, text_mask=None) -> {"logits": [N, 2, H, W]}``: ``text`` = prompt token embeddings
``[N, L, text_dim]`` (e.g. MiniLM, see :mod:`pipeline.learn.prompts`), ``text_mask`` = ``[N, L]`` bool/0-1, true for
real tokens (all true if omitted). ``text=None`` or ``use_text=False`` runs the pure visual path — the same
weights minus the text projector, so "with vs without text" is a fair ablation. A sample whose mask has no
valid token (an empty prompt) takes the visual path too.

Deliberate differences from the original code:
- **Encoder**: a plain-torch deep-stem ResNet-18 instead of Swin-B / ResNet-50 / HGNetv2-B5 (timm and
  torchvision cannot be used here; the spec allows a ResNet-style replacement). Random init or a local
  checkpoint (``encoder_weights``, CSAIL ResNet-18 format; a missing file is an error — the original's
  HGNetv2 ignored ``pretrained`` and called ``exit()`` on a failed download). Any band count per date: equal
  counts share the whole encoder (Siamese, as the paper); unequal counts get a per-date stem conv + BN for t2
  (the rest shared), the "stem" mode of the FC baselines.
- **Any input size**: inputs are replicate-padded to a multiple of 32 and the logits cropped back (Swin
  required H = W = img_size exactly).
- **Text path** (spec §1.5–1.6, §10): the original mean-pooled frozen BERT tokens *including the zero padding*
  (diluting short prompts) and cut prompts to 8 tokens; here every valid token cross-attends over the pixels
  and the pooling uses the attention mask; any token count L; a FiLM shift (zero-initialised) besides the
  gain. The text encoder lives outside the model (embeddings are computed once per distinct prompt and
  cached by :mod:`pipeline.learn.prompts` — the original rebuilt BERT from disk on every batch).
- **No-text path**: the original fed all-zero embeddings, which still produce a learned constant gain through
  the projector's biases; here no text means no text term at all.
- **Linear attention**: ``bev_mode="stable"`` (default) averages the context over tokens and adds a residual,
  so the scale does not grow with H·W; ``"faithful"`` reproduces the original.
- **Decoder resolution**: ``decoder_stride=1`` (default) fuses and decodes at full resolution as the original;
  2 or 4 fuse at that stride and upsample the logits (spec §10; ~16× less memory and compute in the decoder at
  stride 4 — the small CPU variant uses it).
- **Two-class raw logits** ``[N, 2, H, W]`` (the repository contract) instead of 1-channel sigmoid logits;
  ``softmax[:, 1] = sigmoid(l1 − l0)``, so :class:`models.losses.SegChangeLoss` is the original's binary loss.
- Pixel cross-attention uses ``scaled_dot_product_attention`` (flash / memory-efficient on GPU).
- Not reproduced: the ``Transformer`` BEV variant (quadratic in H·W), the FPN + token-connector option (it
  crashes with L-FPN in the original), the phi-1.5 text encoder.

Sizes per 512² tile (``models.complexity``; FLOPs of the visual path, then with a 32-token prompt):
- default (``width=1, dim=256, decoder_stride=1``): 19.74 M parameters (11.33 M encoder, 0.49 M text
  projector), 507.6 GFLOPs, 584.9 with text (the text tokens' keys/values over 262 k full-resolution pixels);
- ``decoder_stride=4``: same parameters, 143.3 / 148.1 GFLOPs;
- small CPU variant ``width=0.25, dim=64, decoder_stride=4``: 1.32 M parameters, 10.4 / 10.8 GFLOPs.
The original: 95.4 M (86.7 M Swin-B) plus a frozen 110 M BERT.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ChangeModel, check_input, pad_to_multiple
from .registry import register
from .resnet import DeepStemResNet18
from .segchange_blocks import (
    BevMode,
    DiffAttention,
    EdgeGaussianRefinement,
    FeatureDifference,
    LightweightFPN,
    LinearAttention,
    QueryDecoder,
    SEGate,
    TextPixelProjector,
    group_norm,
)


@register("segchange_r1")
class SegChangeR1(ChangeModel):
    """SegChange-R1; see the module docstring for the architecture and the differences from the original.

    Args:
        t1_channels, t2_channels: bands of the two dates (t2 defaults to t1).
        text_dim: width D of the prompt token embeddings (384 = MiniLM-L6, 768 = BERT-base).
        use_text: build and use the text projector; False = visual-only model (text inputs are ignored).
        width: encoder channel multiplier (1.0 = ResNet-18 64/128/256/512).
        dim: unified channel width of every scale, the fusion and the mask head (256 in the original;
            a multiple of 16).
        heads: attention heads of the text projector and the query decoder (must divide ``dim``).
        bev_mode: "stable" (default) or "faithful" linear attention, see :class:`LinearAttention`.
        diff_attention: "cbam" (default, the original's variant) or "se".
        use_ega: edge-Gaussian refinement after the fusion (the original's default).
        decoder_stride: 1 (full resolution, the original), 2 or 4.
        num_queries, decoder_layers: of the text-free query decoder (5 and 2 in the original).
        encoder_weights: optional local encoder checkpoint (deep-stem ResNet-18, CSAIL key names).
    """

    text_conditioned = True
    default_loss = "segchange"

    def __init__(
        self,
        t1_channels: int = 3,
        t2_channels: int | None = None,
        text_dim: int = 384,
        use_text: bool = True,
        width: float = 1.0,
        dim: int = 256,
        heads: int = 8,
        bev_mode: BevMode = "stable",
        diff_attention: DiffAttention = "cbam",
        use_ega: bool = True,
        decoder_stride: int = 1,
        num_queries: int = 5,
        decoder_layers: int = 2,
        encoder_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if dim < 16 or dim % 16:
            raise ValueError(f"dim must be a positive multiple of 16, got {dim}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if decoder_stride not in (1, 2, 4):
            raise ValueError(f"decoder_stride must be 1, 2 or 4, got {decoder_stride}")
        if text_dim < 1:
            raise ValueError(f"text_dim must be ≥ 1, got {text_dim}")
        self.t1_channels = t1_channels
        self.t2_channels = t1_channels if t2_channels is None else t2_channels
        self.text_dim = text_dim
        self.use_text = use_text
        self.decoder_stride = decoder_stride
        self.encoder = DeepStemResNet18(self.t1_channels, width, encoder_weights)
        if self.t2_channels != self.t1_channels:
            c0 = self.encoder.out_channels[0]
            self.stem_t2: nn.Module | None = nn.Sequential(
                nn.Conv2d(self.t2_channels, c0, 3, 2, 1, bias=False), nn.BatchNorm2d(c0)
            )
            if not self.stem_t2[0].weight.is_meta:
                nn.init.kaiming_normal_(self.stem_t2[0].weight, mode="fan_out", nonlinearity="relu")
        else:
            self.stem_t2 = None
        self.reduce = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in self.encoder.out_channels)
        self.bev = nn.ModuleList(LinearAttention(dim, mode=bev_mode) for _ in range(4))
        self.diff = nn.ModuleList(FeatureDifference(dim, diff_attention) for _ in range(4))
        self.fpn = LightweightFPN(dim)
        self.ega: nn.Module = EdgeGaussianRefinement(dim) if use_ega else nn.Identity()
        self.se = SEGate(dim, reduction=8)
        self.text_projector = TextPixelProjector(text_dim, dim, heads) if use_text else None
        self.query_decoder = QueryDecoder(dim, heads, decoder_layers, num_queries)
        c2, c4 = dim // 2, dim // 4
        self.head = nn.Sequential(
            nn.Conv2d(2 * dim, c2, 1),
            group_norm(c2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c4, 3, padding=1),
            group_norm(c4),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, self.num_classes, 1),
        )

    @property
    def in_channels(self) -> tuple[int, int]:
        return (self.t1_channels, self.t2_channels)

    def _encode(self, x: Tensor, t2: bool) -> list[Tensor]:
        enc = self.encoder
        if t2 and self.stem_t2 is not None:
            x = enc.relu1(self.stem_t2(x))
        else:
            x = enc.relu1(enc.bn1(enc.conv1(x)))
        x = enc.relu2(enc.bn2(enc.conv2(x)))
        x = enc.relu3(enc.bn3(enc.conv3(x)))
        c1 = enc.layer1(enc.maxpool(x))
        c2 = enc.layer2(c1)
        c3 = enc.layer3(c2)
        return [c1, c2, c3, enc.layer4(c3)]

    def _check_text(self, text: Tensor, text_mask: Tensor | None, n: int) -> Tensor:
        if text.ndim != 3 or text.shape[0] != n or text.shape[2] != self.text_dim:
            raise ValueError(
                f"SegChange-R1 text: expected [N={n}, L, D={self.text_dim}] token embeddings, got {tuple(text.shape)}"
            )
        if text_mask is None:
            return torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        if text_mask.shape != text.shape[:2]:
            raise ValueError(
                f"SegChange-R1 text_mask: expected shape {tuple(text.shape[:2])}, got {tuple(text_mask.shape)}"
            )
        return text_mask.to(device=text.device) != 0

    def forward(
        self, t1: Tensor, t2: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """t1, t2: ``[N, C, H, W]``; text: ``[N, L, text_dim]`` or None; text_mask: ``[N, L]`` (true = token)."""
        check_input(t1, self.t1_channels, "SegChange-R1 t1")
        check_input(t2, self.t2_channels, "SegChange-R1 t2")
        if t2.shape[0] != t1.shape[0] or t2.shape[-2:] != t1.shape[-2:]:
            raise ValueError(f"SegChange-R1: t1 is {tuple(t1.shape)} but t2 is {tuple(t2.shape)}")
        mask = None
        if text is not None and self.text_projector is not None:
            mask = self._check_text(text, text_mask, t1.shape[0])
        x1, (h, w) = pad_to_multiple(t1, 32)
        x2, _ = pad_to_multiple(t2, 32)
        hp, wp = x1.shape[-2:]
        f1, f2 = self._encode(x1, t2=False), self._encode(x2, t2=True)
        diffs = []
        for i in range(4):
            a = self.bev[i](self.reduce[i](f1[i]))
            b = self.bev[i](self.reduce[i](f2[i]))
            diffs.append(self.diff[i](a, b))
        size = (hp // self.decoder_stride, wp // self.decoder_stride)
        feat = self.ega(self.fpn(diffs, size))
        gate = self.se(feat)
        if mask is not None:
            assert text is not None and self.text_projector is not None
            gain, shift = self.text_projector(feat, text.to(feat.dtype), mask)
            gated = feat * (gate + gain[..., None, None]) + shift[..., None, None]
        else:
            gated = feat * gate
        g = self.query_decoder(feat)
        g = g[..., None, None].expand(-1, -1, *feat.shape[-2:])
        logits = self.head(torch.cat([gated, g], dim=1))
        if logits.shape[-2:] != (hp, wp):
            logits = F.interpolate(logits, size=(hp, wp), mode="bilinear", align_corners=False)
        return {"logits": logits[..., :h, :w]}
