"""A torch Dataset over the tile index written by `prepare` (or a LEVIR-CD / open-cd folder).

The split comes from the index, never from a shuffle here. Tiles are GeoTIFFs read with their
valid masks under the validity policy prepare applied (:func:`validity_policy`; nodata, NaN and
GOLD's black rule, as detection reads them): a pixel invalid in any image becomes label 255
(ignored), so nodata never counts as "no change". Semantic change data adds per-date class tiles (roles ``semantic_t1``,
``semantic_t2``); without a change label the change target is the class transition. Text-guided
models get the prompt embedding of each tile (``text`` [L, D], ``text_mask`` [L]).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rasterio.errors import NotGeoreferencedWarning
from torch.utils.data import Dataset

from pipeline.errors import InputError
from pipeline.io.raster import NODATA_U8, open_raster, read_window
from pipeline.io.validity import POLICY_KEY, black_values, default_rule
from pipeline.learn.augment import AugmentSettings, optical_jitter, paired_geometry
from pipeline.learn.normalization import BandStats, Modality, fit_stats, normalize

SEMANTIC_ROLES = ("semantic_t1", "semantic_t2")
FOLDER_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".bmp")


def load_index(root: Path, folder_labels: str = "binary255") -> pd.DataFrame:
    """Tiles (tile_id, split, path per role) from ``root/catalog.gpkg`` or a LEVIR-style folder.

    LEVIR-CD / open-cd layout: ``root/{train,val,test}/{A,B,label}/{name}.png``; its labels are
    0/255 masks (``folder_labels="binary255"``) or 0/1/255 = ignore (``"change01"``).

    Args:
        root: a prepare output folder (``catalog.gpkg`` and ``tiles/``) or a LEVIR-style folder.
        folder_labels: the label encoding of a LEVIR-style folder, ``"binary255"`` or ``"change01"``
            (prepare output is always ``"change01"``).

    Returns:
        One row per tile: ``tile_id``, ``split``, ``label_format``, one path column per role found
        (``A``, ``B``, ``C``, ``label``...) and, from a catalog, ``group``, ``change_fraction`` and the
        tile's pixel offsets in its group's grid (``col_off``, ``row_off``).

    Raises:
        InputError: ``root`` has neither ``catalog.gpkg`` nor ``{train,val,test}/A/`` tiles, or its
            ``catalog.gpkg`` is damaged or has no ``tiles`` layer.
    """
    catalog = root / "catalog.gpkg"
    if catalog.exists():
        from pipeline.prepare.tile_index import read_tiles  # geopandas only when there is a GeoPackage

        tiles = pd.DataFrame(read_tiles(catalog).drop(columns="geometry"))
        rows = []
        for tile in tiles.itertuples():
            folder = root / "tiles" / tile.split
            roles = {p.name: p / f"{tile.tile_id}.tif" for p in sorted(folder.iterdir()) if p.is_dir()}
            rows.append({
                "tile_id": tile.tile_id, "group": tile.group_name, "split": tile.split, "label_format": "change01",
                "change_fraction": getattr(tile, "change_fraction", np.nan),
                "col_off": getattr(tile, "col_off", np.nan), "row_off": getattr(tile, "row_off", np.nan), **roles,
            })
        return pd.DataFrame(rows)
    rows = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name in ("train", "val", "test")):
        role_dirs = {p.name: p for p in sorted(split_dir.iterdir()) if p.is_dir()}
        reference = role_dirs.get("A")
        if reference is None:
            continue
        for image in sorted(reference.iterdir()):
            if image.suffix.lower() in FOLDER_SUFFIXES:
                rows.append({
                    "tile_id": image.stem, "split": split_dir.name, "label_format": folder_labels,
                    **{role: folder / image.name for role, folder in role_dirs.items()},
                })
    if not rows:
        raise InputError(root, "no tile index: neither catalog.gpkg nor {train,val,test}/A/ folders")
    return pd.DataFrame(rows)


def _read(path: Path, black_value: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_raster(path) as dataset:
            return read_window(dataset, black_value=black_value)


def _default_policy(index: pd.DataFrame, roles: Sequence[str]) -> dict[str, dict]:
    """The default rule of each role, from the data type and nodata of its first tile."""
    policy = {}
    for role in roles:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with open_raster(Path(index[role].iloc[0])) as dataset:
                policy[role] = default_rule(dataset.dtypes[0], dataset.nodata)
    return policy


def _recorded_policy(path: Path, roles: Sequence[str]) -> dict[str, dict] | None:
    """The validity policy a group manifest records for ``roles``; None when it records none."""
    if not path.exists():
        return None
    try:
        policy = json.loads(path.read_text()).get(POLICY_KEY)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable group manifest ({exc})") from None
    if policy is None:
        return None
    black_values(policy, list(roles), path)  # every role has a rule
    return {role: policy[role] for role in roles}


def validity_policy(root: Path, index: pd.DataFrame, roles: Sequence[str]) -> dict[str, dict]:
    """The validity policy of the image roles a model reads, as prepare applied it to their tiles.

    Each group of a prepare output records its rule in ``groups/{group}/manifest.json``; training
    stores one policy, so the groups must agree. A group whose manifest predates the policy (or is
    missing), and a LEVIR-style folder, get :func:`~pipeline.io.validity.default_rule` from the data
    type of each role's first tile: prepare's default black value for integer imagery, the rule
    detection applies to a checkpoint without a policy.

    Args:
        root: the ``data`` folder of :func:`load_index`.
        index: the tile index from :func:`load_index`.
        roles: the image roles read, e.g. ``("A", "B")``.

    Returns:
        role → ``{"black_value": float or None, "nodata": float or None}`` (see :mod:`pipeline.io.validity`).

    Raises:
        InputError: a manifest is unreadable or has no rule for one of ``roles``, or the groups were
            prepared with different rules (the message names two of them).
    """
    from pipeline.prepare.group_build import MANIFEST  # prepare's modules only for a prepare output

    default = _default_policy(index, roles)
    groups = sorted(index["group"].dropna().unique()) if "group" in index.columns else []
    policies = {group: _recorded_policy(root / "groups" / group / MANIFEST, roles) or default for group in groups}
    first = next(iter(policies), None)
    for group, policy in policies.items():
        if policy != policies[first]:
            raise InputError(
                root, f"its groups were prepared with different validity rules ({first}: {policies[first]}; "
                f"{group}: {policy}); prepare them with one tiling.black_value (a rerun records the rule)",
            )
    return default if first is None else policies[first]


def check_index(
    index: pd.DataFrame, roles: Sequence[str], bands: dict[str, int] | None = None, *, semantic: bool = False
) -> dict[str, int]:
    """Fail before training when tiles are missing or band counts differ; returns bands per role.

    Binary change needs a ``label`` per tile; semantic change needs both class tiles (the change label
    is then optional).

    Args:
        index: the tile index from :func:`load_index`.
        roles: the image roles the model reads, e.g. ``("A", "B")``.
        bands: band counts already fixed per role (e.g. by a checkpoint); tiles must match them.
        semantic: whether the targets are the per-date class tiles ``semantic_t1`` / ``semantic_t2``.

    Returns:
        The band count per role (1 for label roles).

    Raises:
        InputError: a role has no column in the index, a listed tile is missing or unreadable, or a tile's
            band count differs from the other tiles of its role (or the checkpoint); names the file.
    """
    found: dict[str, int] = dict(bands or {})
    targets = (*SEMANTIC_ROLES, *(("label",) if "label" in index.columns else ())) if semantic else ("label",)
    for role in (*roles, *targets):
        if role not in index.columns:
            raise InputError(Path(str(index.get("A", pd.Series(["index"])).iloc[0])).parent.parent, f"the tile index has no '{role}' images")
        for path in index[role]:
            path = Path(path)
            if not path.exists():
                raise InputError(path, "tile listed in the index is missing")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with open_raster(path) as dataset:
                    count = dataset.count if role not in ("label", *SEMANTIC_ROLES) else 1
            expected = found.setdefault(role, count)
            if count != expected:
                raise InputError(path, f"has {count} bands, other {role} tiles (or the checkpoint) have {expected}")
    return found


def read_label(path: Path, label_format: str) -> np.ndarray:
    """A change label tile as :class:`TileDataset` reads it: 1 change, 0 no change, 255 ignored.

    Args:
        path: the label tile.
        label_format: ``"binary255"`` (0/255 masks: > 127 is change) or ``"change01"`` (values kept).

    Returns:
        uint8 (H, W), 255 also where the tile is nodata.

    Raises:
        InputError: the tile is unreadable.
    """
    data, valid = _read(path)
    label = (data[0] > 127).astype(np.uint8) if label_format == "binary255" else data[0].astype(np.uint8)
    label[~valid] = NODATA_U8
    return label


def _tile_change_counts(row: dict) -> tuple[int, int]:
    """(change, labelled) pixels of one tile's label, read as :class:`TileDataset` reads it."""
    if isinstance(row.get("label"), (str, Path)):
        label = read_label(Path(row["label"]), row["label_format"])
        valid = label != NODATA_U8
        changed = label == 1
    else:  # semantic data without a change label: the class transition
        t1, t2 = (_classes(Path(row[role]), np.True_) for role in SEMANTIC_ROLES)
        valid = (t1 != NODATA_U8) & (t2 != NODATA_U8)
        changed = t1 != t2
    return int((changed & valid).sum()), int(valid.sum())


def split_change_counts(index: pd.DataFrame, split: str) -> tuple[int, int]:
    """Change and labelled pixels of a split, counted on its label tiles.

    Labels are read as :class:`TileDataset` reads them (0/255 masks of a LEVIR-style folder: > 127
    is change; prepare's 0/1/255: 1 is change, 255 and nodata are not labelled); semantic tiles
    without a change label count the class transitions. The images are not read, so a pixel that is
    nodata only in an image still counts.

    Args:
        index: the tile index from :func:`load_index`.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        (change pixels, labelled pixels) over the split's tiles.

    Raises:
        InputError: a label tile is unreadable.
    """
    counts = [_tile_change_counts(row) for row in index[index.split == split].to_dict("records")]
    return sum(c for c, _ in counts), sum(n for _, n in counts)


def split_has_change(index: pd.DataFrame, split: str) -> bool:
    """Whether any label tile of a split holds a change pixel.

    A prepare index answers from its per-tile ``change_fraction`` when one is positive; otherwise
    the label tiles are read until the first change pixel.

    Args:
        index: the tile index from :func:`load_index`.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        True when the split has a change pixel.

    Raises:
        InputError: a label tile is unreadable.
    """
    rows = index[index.split == split]
    if "change_fraction" in rows.columns and (rows["change_fraction"] > 0).any():
        return True
    return any(_tile_change_counts(row)[0] for row in rows.to_dict("records"))


def changed_tiles(index: pd.DataFrame, split: str) -> list[int]:
    """The rows (0-based, in the split's order) of a split's tiles holding a change pixel.

    From the per-tile ``change_fraction`` where the index has one, else from the label tiles.

    Args:
        index: the tile index from :func:`load_index`.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        The positions of the changed tiles in ``TileDataset(index, split, ...)``.

    Raises:
        InputError: a label tile is unreadable.
    """
    rows = index[index.split == split].reset_index(drop=True)
    fractions = rows["change_fraction"] if "change_fraction" in rows.columns else pd.Series(np.nan, rows.index)
    return [i for i, row in enumerate(rows.to_dict("records"))
            if (fractions[i] > 0 if pd.notna(fractions[i]) else _tile_change_counts(row)[0] > 0)]


def tile_size(index: pd.DataFrame, role: str) -> int:
    """The side of the split's tiles a model trains on, from the first training tile of ``role``.

    Args:
        index: the tile index from :func:`load_index`.
        role: an image role, e.g. ``"A"``.

    Returns:
        The shorter side of the first training tile, in pixels.

    Raises:
        InputError: the index has no training tiles.
    """
    train = index[index.split == "train"]
    if train.empty:
        raise InputError(Path("tile index"), "has no training tiles")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_raster(Path(train[role].iloc[0])) as dataset:
            return min(dataset.height, dataset.width)


def fit_normalization(
    index: pd.DataFrame, modalities: dict[str, Modality], *, max_tiles: int = 64, pixels: int = 8192, seed: int = 0,
    validity: dict[str, dict] | None = None,
) -> dict[str, BandStats]:
    """Per-role statistics from valid pixels of (up to ``max_tiles``) training tiles.

    Args:
        index: the tile index from :func:`load_index`.
        modalities: ``"optical"`` or ``"sar"`` per image role to normalise.
        max_tiles: the most training tiles read, drawn at random.
        pixels: the most valid pixels sampled per tile and role.
        seed: seed of the tile and pixel draws.
        validity: the validity policy (:func:`validity_policy`) with a rule per role of ``modalities``;
            None applies the tiles' masks only, no black rule.

    Returns:
        The BandStats per role (see :func:`pipeline.learn.normalization.fit_stats`).

    Raises:
        InputError: the index has no training tiles, a tile is unreadable, or a role has no valid pixel
            in the chosen tiles.
    """
    train = index[index.split == "train"]
    if train.empty:
        raise InputError(Path("tile index"), "has no training tiles")
    rng = np.random.default_rng(seed)
    chosen = train.iloc[np.sort(rng.permutation(len(train))[:max_tiles])]
    stats = {}
    for role, modality in modalities.items():
        samples = []
        black_value = None if validity is None else validity[role]["black_value"]
        for path in chosen[role]:
            data, valid = _read(Path(path), black_value)
            values = data[:, valid]
            if values.shape[1]:
                samples.append(values[:, rng.permutation(values.shape[1])[:pixels]])
        if not samples:
            raise InputError(Path(chosen[role].iloc[0]), f"no valid pixels in the training tiles of role {role}")
        stats[role] = fit_stats(np.concatenate(samples, axis=1), modality)
    return stats


def _classes(path: Path, valid: np.ndarray) -> np.ndarray:
    """A class tile as int64 with 255 wherever it or any image is invalid."""
    data, label_valid = _read(path)
    classes = data[0].astype(np.int64)
    classes[~(label_valid & valid)] = NODATA_U8
    return classes


class TileDataset(Dataset):
    """Samples {role: float32 (C, H, W), "label": int64 (H, W)} of one split.

    A pixel invalid in any image gets label 255 (ignored); each image is zeroed on its own invalid
    pixels after normalisation, as detection reads it (:func:`~pipeline.learn.normalization.normalize`).

    Args:
        index: the tile index from :func:`load_index`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        stats: normalisation statistics per image role; its keys are the roles read.
        validity: the validity policy (:func:`validity_policy`) with a rule per role of ``stats``;
            None applies the tiles' masks only, no black rule.
        augment: augmentation settings, or None for none (validation, test).
        seed: seed of the augmentation draws.
        semantic: also "semantic_t1" / "semantic_t2" int64 (H, W) class targets (255 = ignore).
        prompts: a :class:`pipeline.learn.prompts.PromptEmbeddings`; adds "text" and "text_mask".
    """

    def __init__(
        self,
        index: pd.DataFrame,
        split: str,
        stats: dict[str, BandStats],
        *,
        augment: AugmentSettings | None = None,
        seed: int = 0,
        semantic: bool = False,
        prompts: Any | None = None,
        validity: dict[str, dict] | None = None,
    ) -> None:
        self.rows = index[index.split == split].reset_index(drop=True)
        self.stats = stats
        self.black_values = {role: None if validity is None else validity[role]["black_value"] for role in stats}
        self.augment = augment
        self.seed = seed
        self.semantic = semantic
        self.prompts = prompts
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch: augmentation draws depend on (seed, epoch, sample), so resumed runs see the same data.

        Args:
            epoch: the training epoch about to start (0-based).
        """
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return self.sample(item)

    def sample(self, item: int, position: int | None = None, focus_change: bool = False) -> dict[str, torch.Tensor]:
        """One sample of tile ``item``, augmented by draws of (seed, epoch, item[, position]).

        Args:
            item: the tile's row in this split.
            position: the sample's place in the epoch's draws (:mod:`pipeline.learn.sampling`), so a tile
                drawn twice in an epoch gets two augmentations; None: the draws of ``dataset[item]``.
            focus_change: the random crop holds a change pixel when the tile has one.

        Returns:
            The sample, as ``dataset[item]``.
        """
        row = self.rows.iloc[item]
        images, valid_all = {}, None
        for role in self.stats:
            data, valid = _read(Path(row[role]), self.black_values[role])
            images[role] = (data, valid)
            valid_all = valid if valid_all is None else valid_all & valid
        targets = {role: _classes(Path(row[role]), valid_all) for role in SEMANTIC_ROLES} if self.semantic else {}
        if isinstance(row.get("label"), (str, Path)):
            label = read_label(Path(row["label"]), row["label_format"]).astype(np.int64)
            label[~valid_all] = NODATA_U8
        else:  # semantic data without a change label: the class transition
            t1, t2 = targets["semantic_t1"], targets["semantic_t2"]
            label = np.where((t1 == NODATA_U8) | (t2 == NODATA_U8), NODATA_U8, t1 != t2).astype(np.int64)
        rng = np.random.default_rng((self.seed, self.epoch, item) + (() if position is None else (position,)))
        arrays = {role: normalize(data, valid, self.stats[role]) for role, (data, valid) in images.items()}
        arrays.update({f"{role}_valid": valid for role, (_, valid) in images.items()})
        arrays["label"] = label
        arrays.update(targets)
        if self.augment is not None:
            arrays = paired_geometry(arrays, self.augment, rng, focus=label == 1 if focus_change else None)
            for role in images:
                if self.stats[role].modality == "optical":
                    arrays[role] = optical_jitter(arrays[role], arrays[f"{role}_valid"], self.augment, rng)
        sample = {role: torch.from_numpy(np.ascontiguousarray(arrays[role])) for role in images}
        for target in ("label", *targets):
            sample[target] = torch.from_numpy(np.ascontiguousarray(arrays[target]))
        if self.prompts is not None:
            text, mask = self.prompts.lookup(str(row["tile_id"]), str(row.get("group", "")))
            sample["text"], sample["text_mask"] = torch.from_numpy(text), torch.from_numpy(mask)
        return sample
