"""FC-EF / FC-Siam-conc / FC-Siam-diff: shapes for every band layout, heterogeneous pairs, odd sizes."""

from __future__ import annotations

import pytest
import torch

import models
from tests.models.conftest import images

FC = ["fc_ef", "fc_siam_conc", "fc_siam_diff"]


@pytest.mark.parametrize("name", FC)
@pytest.mark.parametrize(("c1", "c2", "h", "w"), [(3, 3, 64, 64), (4, 4, 64, 64), (4, 2, 64, 64), (3, 1, 70, 90)])
@torch.no_grad()
def test_output_shape(name: str, c1: int, c2: int, h: int, w: int) -> None:
    model = models.build(name, t1_channels=c1, t2_channels=c2)
    out = model(images(2, c1, h, w), images(2, c2, h, w))
    assert out["logits"].shape == (2, 2, h, w)
    assert torch.isfinite(out["logits"]).all()


def test_siamese_modes() -> None:
    assert models.build("fc_siam_diff", t1_channels=4).siamese == "shared"
    assert models.build("fc_siam_diff", t1_channels=4, t2_channels=2).siamese == "stem"
    with pytest.raises(ValueError, match="equal band counts"):
        models.build("fc_siam_conc", t1_channels=4, t2_channels=2, siamese="shared")
    shared = models.build("fc_siam_conc", t1_channels=3)
    stem = models.build("fc_siam_conc", t1_channels=3, siamese="stem")
    pseudo = models.build("fc_siam_conc", t1_channels=3, siamese="pseudo")
    n = [models.count_parameters(m) for m in (shared, stem, pseudo)]
    assert n[0] < n[1] < n[2]
    with torch.no_grad():
        out = pseudo.eval()(images(1, 3, 32, 32), images(1, 3, 32, 32))
    assert out["logits"].shape == (1, 2, 32, 32)


def test_parameter_counts_match_the_paper() -> None:
    # Daudt et al. 2018, Table 1: 1.35 M, 1.55 M, 1.35 M parameters.
    counts = {name: models.count_parameters(models.build(name)) for name in FC}
    assert counts["fc_ef"] == pytest.approx(1.35e6, rel=0.01)
    assert counts["fc_siam_conc"] == pytest.approx(1.55e6, rel=0.01)
    assert counts["fc_siam_diff"] == pytest.approx(1.35e6, rel=0.01)


def test_wrong_band_count_is_a_clear_error() -> None:
    model = models.build("fc_ef", t1_channels=4, t2_channels=2)
    with pytest.raises(ValueError, match=r"t2: expected a \[N, 2, H, W\]"):
        model(images(1, 4, 32, 32), images(1, 3, 32, 32))


def test_odd_sizes_are_padded_at_the_far_edges() -> None:
    """A 61×75 input gives the top-left crop of the prediction for the same input replicate-padded by hand to
    64×80: pixel (0, 0) stays where it was."""
    model = models.build("fc_siam_diff").eval()
    x1, x2 = images(1, 3, 61, 75), images(1, 3, 61, 75)
    pad = torch.nn.functional.pad
    with torch.no_grad():
        odd = model(x1, x2)["logits"]
        padded = model(pad(x1, (0, 5, 0, 3), mode="replicate"), pad(x2, (0, 5, 0, 3), mode="replicate"))["logits"]
    assert odd.shape == (1, 2, 61, 75)
    assert torch.allclose(odd, padded[..., :61, :75], atol=1e-5)
