"""Photometric perturbation of the t2 image for STIKDNet's self-distillation (pure torch, no torchvision).

What: ``perturb(x, config)`` = ColorJitter(brightness, contrast, saturation, hue) in a random order, then a
Gaussian blur (kernel 3, σ ~ U[σ_min, σ_max]) — the "strong" perturbation that STILKDNet's trainer applies
to image B (torchvision ``ColorJitter(0.4, 0.4, 0.4, 0.1)`` + ``GaussianBlur(3, (0.1, 2.0))``, spec §3).
Factors follow torchvision: brightness/contrast/saturation factor ~ U[max(0, 1 − s), 1 + s], hue shift
~ U[−h, h]; each jitter op is a blend ``clamp(f·img + (1 − f)·other, 0, 1)`` with other = 0 (brightness),
the per-image mean of the grey image (contrast) or the grey image (saturation); hue rotates H in HSV; the
blur kernel is ``exp(−x²/2σ²)`` normalised, reflect padding. Label-preserving: only t2 is touched.

Why a re-implementation: torchvision cannot be used here; the ops are short and written after torchvision's
tensor functional code so both modes can be compared with the original.

Modes (``PerturbationConfig.mode``):
- ``"correct"`` (default): the input is the model input, normalised to [0, 1] per band
  (:mod:`pipeline.learn.normalization`), the jitter works in that space and the result is clipped to [0, 1].
  Every parameter (factors, op order, σ) is drawn **per sample**. Saturation and hue only mean something for
  3-band RGB: with any other band count (4-band GF-2, 1–2-band SAR) only brightness and contrast are applied
  (contrast blends toward the per-image mean over all bands, as torchvision does for non-RGB images).
- ``"reference"``: reproduces bug B2 of the original. The input is first mapped to the original's
  normalisation, x' = 2x − 1 ∈ [−1, 1]; the jitter clamps every blend to [0, 1] (torchvision's float
  behaviour), so every intensity below 0.5 collapses to the same value; **one** parameter draw per batch (the
  original called the transform once on the batch tensor). The result is mapped back to the model's input
  space with (y + 1) / 2, so the network sees exactly the clean-vs-perturbed relation the original network saw
  (original perturbed value 0 ↔ 0.5 here; a constant 0.3 image becomes a constant 0.5, i.e. the "0" of the
  original). Saturation/hue are skipped for band counts other than 3 (torchvision would raise for 2 or 4 bands
  and skips them for 1). One numerical guard: the HSV conversion divides by max(R,G,B); where that is exactly 0
  with negative channels (possible only in [−1, 1] space) torchvision returns NaN, here the divisor is 1.

Randomness comes from torch's global CPU RNG (or an explicit ``generator``): the training loop's seeding makes
the draws reproducible, and drawing on the CPU makes them identical on CPU and GPU runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

PerturbationMode = Literal["correct", "reference"]
_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclass(frozen=True)
class PerturbationConfig:
    """Strengths of the t2 perturbation; the defaults are STILKDNet's active "strong" setting.

    brightness, contrast, saturation: s ≥ 0, factor ~ U[max(0, 1 − s), 1 + s] (0 disables the op).
    hue: h ∈ [0, 0.5], shift ~ U[−h, h] (0 disables). blur_kernel: odd size (1 disables the blur).
    blur_sigma: (σ_min, σ_max), 0 < σ_min ≤ σ_max. mode: "correct" or "reference" (see the module docstring).
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    blur_kernel: int = 3
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mode: PerturbationMode = "correct"

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"perturbation {name} must be ≥ 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"perturbation hue must be in [0, 0.5], got {self.hue}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"perturbation blur_kernel must be odd and ≥ 1, got {self.blur_kernel}")
        sigma = tuple(float(s) for s in self.blur_sigma)
        if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"perturbation blur_sigma must be (min, max) with 0 < min ≤ max, got {self.blur_sigma}")
        object.__setattr__(self, "blur_sigma", sigma)  # YAML gives a list
        if self.mode not in ("correct", "reference"):
            raise ValueError(f"perturbation mode must be 'correct' or 'reference', got {self.mode!r}")

    @classmethod
    def from_any(cls, value: PerturbationConfig | Mapping[str, Any] | str | None) -> PerturbationConfig:
        """Build from None (defaults), a preset name ("strong", "weak"), a keyword dict or an instance.

        A dict may name a ``preset`` and override some of its fields, e.g. ``{"preset": "weak", "mode":
        "reference"}``; unknown keys raise ValueError listing the accepted ones.
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return preset(value)
        if isinstance(value, Mapping):
            options = dict(value)
            base = preset(options.pop("preset", "strong"))
            fields = [f.name for f in dataclasses.fields(cls)]
            unknown = sorted(set(options) - set(fields))
            if unknown:
                raise ValueError(
                    f"unknown perturbation option(s) {', '.join(unknown)}; accepted: preset, {', '.join(fields)}"
                )
            return dataclasses.replace(base, **options)
        raise ValueError(
            f"perturbation must be a preset name, a dict or a PerturbationConfig, got {type(value).__name__}"
        )


_PRESETS = {
    # The trainer's active setting (spec §3, candidate 1).
    "strong": PerturbationConfig(),
    # The commented-out alternative in the original trainer (spec §3, candidate 2).
    "weak": PerturbationConfig(0.1, 0.1, 0.1, 0.05, 3, (0.1, 1.0)),
}


def preset(name: str) -> PerturbationConfig:
    """The named perturbation ("strong" = STILKDNet's final choice, "weak")."""
    key = name.strip().lower()
    if key not in _PRESETS:
        raise ValueError(f"unknown perturbation preset {name!r}; available: {', '.join(sorted(_PRESETS))}")
    return _PRESETS[key]


@dataclass(frozen=True)
class PerturbationParams:
    """One draw, per sample: ``factors[op]`` [N] (None = op off), ``order`` [N, 4] op indices, ``sigma`` [N]."""

    factors: dict[str, Tensor | None]
    order: Tensor
    sigma: Tensor | None


def active_ops(config: PerturbationConfig, channels: int) -> list[str]:
    """The jitter ops applied to an image of ``channels`` bands (saturation/hue only for 3-band RGB)."""
    ops = [op for op in _OPS if getattr(config, op) > 0]
    if channels != 3:
        ops = [op for op in ops if op in ("brightness", "contrast")]
    return ops


def draw_params(
    n: int, channels: int, config: PerturbationConfig, generator: torch.Generator | None = None
) -> PerturbationParams:
    """Draw the parameters for a batch of ``n`` images (one draw repeated ``n`` times in reference mode)."""
    draws = 1 if config.mode == "reference" else n
    ops = active_ops(config, channels)

    def uniform(low: float, high: float) -> Tensor:
        return torch.rand(draws, generator=generator, dtype=torch.float64) * (high - low) + low

    factors: dict[str, Tensor | None] = {}
    for op in _OPS:
        strength = getattr(config, op)
        if op not in ops:
            factors[op] = None
        elif op == "hue":
            factors[op] = uniform(-strength, strength)
        else:
            factors[op] = uniform(max(0.0, 1.0 - strength), 1.0 + strength)
    order = torch.argsort(torch.rand(draws, len(_OPS), generator=generator), dim=1)
    sigma = uniform(*config.blur_sigma) if config.blur_kernel > 1 else None
    if draws != n:
        factors = {k: None if v is None else v.expand(n) for k, v in factors.items()}
        order = order.expand(n, -1)
        sigma = None if sigma is None else sigma.expand(n)
    return PerturbationParams(factors, order, sigma)


def perturb(
    x: Tensor, config: PerturbationConfig | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Perturbed copy of ``x`` [N, C, H, W] (values in [0, 1]); the input is not modified. No gradient."""
    config = config or PerturbationConfig()
    params = draw_params(x.shape[0], x.shape[1], config, generator)
    return apply_params(x, params, config)


@torch.no_grad()
def apply_params(x: Tensor, params: PerturbationParams, config: PerturbationConfig) -> Tensor:
    """Apply a parameter draw to ``x`` (see :func:`perturb`)."""
    if x.ndim != 4:
        raise ValueError(f"perturb: expected an [N, C, H, W] tensor, got shape {tuple(x.shape)}")
    dtype = x.dtype
    with torch.autocast(x.device.type, enabled=False):
        return _apply(x.float(), params, config).to(dtype)


def _apply(x: Tensor, params: PerturbationParams, config: PerturbationConfig) -> Tensor:
    out = x * 2.0 - 1.0 if config.mode == "reference" else x.clone()
    order = params.order.cpu()  # the masks are decided on the CPU: no device sync per op
    for position in range(order.shape[1]):
        for index, op in enumerate(_OPS):
            factor = params.factors[op]
            if factor is None:
                continue
            chosen = order[:, position] == index
            if not bool(chosen.any()):
                continue
            f = factor.cpu()[chosen].to(device=x.device, dtype=out.dtype).view(-1, 1, 1, 1)
            rows = chosen.nonzero().flatten().to(x.device)
            out[rows] = _JITTER[op](out[rows], f)
    if params.sigma is not None:
        out = gaussian_blur(out, params.sigma, config.blur_kernel)
    return (out + 1.0) * 0.5 if config.mode == "reference" else out.clamp(0.0, 1.0)


def _grey(img: Tensor) -> Tensor:
    """ITU-R 601 luma of an RGB batch, [N, 1, H, W] (torchvision's ``rgb_to_grayscale``)."""
    r, g, b = img.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(img: Tensor, other: Tensor | float, f: Tensor) -> Tensor:
    return (f * img + (1.0 - f) * other).clamp(0.0, 1.0)


def _brightness(img: Tensor, f: Tensor) -> Tensor:
    return _blend(img, 0.0, f)


def _contrast(img: Tensor, f: Tensor) -> Tensor:
    source = _grey(img) if img.shape[1] == 3 else img
    return _blend(img, source.mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(img: Tensor, f: Tensor) -> Tensor:
    return _blend(img, _grey(img), f)


def _hue(img: Tensor, shift: Tensor) -> Tensor:
    h, s, v = _rgb_to_hsv(img).unbind(dim=1)
    h = torch.remainder(h + shift[:, 0], 1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=1))


_JITTER = {"brightness": _brightness, "contrast": _contrast, "saturation": _saturation, "hue": _hue}


def _rgb_to_hsv(img: Tensor) -> Tensor:
    r, g, b = img.unbind(dim=1)
    maxc = img.max(dim=1).values
    minc = img.min(dim=1).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc | (maxc == 0), ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(img: Tensor) -> Tensor:
    h, s, v = img.unbind(dim=1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    r = torch.stack((v, q, p, p, t, v), dim=1)
    g = torch.stack((t, v, v, q, p, p), dim=1)
    b = torch.stack((p, p, t, v, v, q), dim=1)
    idx = i.unsqueeze(1)
    return torch.cat([c.gather(1, idx) for c in (r, g, b)], dim=1)


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels, [N, size], for per-sample ``sigma`` [N] (torchvision's formula)."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x[None] / sigma.to(torch.float64)[:, None]) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, size: int) -> Tensor:
    """Separable Gaussian blur with a per-sample σ, reflect padding (as torchvision's GaussianBlur)."""
    n, c, h, w = x.shape
    k = gaussian_kernels(sigma, size).to(device=x.device, dtype=x.dtype)  # [N, size]
    k = k.repeat_interleave(c, dim=0)  # [N·C, size], one filter per (sample, band)
    pad = size // 2
    mode = "reflect" if min(h, w) > pad else "replicate"
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode=mode)
    y = F.conv2d(y, k.view(n * c, 1, 1, size), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, size, 1), groups=n * c)
    return y.view(n, c, h, w)
