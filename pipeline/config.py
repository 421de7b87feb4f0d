"""Run configuration: one YAML file per run, validated by pydantic.

Every default lives here. Unknown keys are errors (``extra="forbid"``) so that a typo such as
``min_overlpa`` is reported with its name instead of being silently ignored.
"""

from __future__ import annotations

import datetime as dt
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.io.paths import safe_name


class Sensor(str, Enum):
    """Sensor family of a scene; decides how it is read and how it is co-registered."""

    gf2 = "gf2"
    gf3 = "gf3"
    s2 = "s2"
    generic = "generic"


class Role(str, Enum):
    """Role of an image inside a scene group, with GOLD's letters."""

    A = "A"  # optical t1 (the geometric reference)
    B = "B"  # SAR t2 (or a second optical date in LEVIR-style pairs)
    C = "C"  # optical t2 (GOLD's teacher input)
    label = "label"  # change mask: 0 no change, 1 change, 255 ignore
    semantic_t1 = "semantic_t1"  # land-cover classes at t1 (0..K-1, 255 ignore), for semantic change
    semantic_t2 = "semantic_t2"  # land-cover classes at t2

    @property
    def is_label(self) -> bool:
        """A label raster (categorical, one band, 255 = ignore), not an image."""
        return self in (Role.label, Role.semantic_t1, Role.semantic_t2)


SAR_SENSORS = frozenset({Sensor.gf3})


LabelEncoding = Literal["change01", "binary255"]

# A name that becomes a folder or file name (OUT/groups/{group}, tile ids, detection folders).
SafeName = Annotated[str, AfterValidator(safe_name)]
# What a prepare config may say: an encoding, or "auto" (resolved per label file from its values,
# see pipeline.prepare.labels).
LabelEncodingSetting = Literal["auto", "change01", "binary255"]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SceneEntry(StrictModel):
    """One image in a scene list."""

    path: Path
    sensor: Sensor = Sensor.generic
    role: Role
    date: dt.date | None = None
    group: SafeName | None = None
    id: SafeName | None = Field(default=None, description="Scene id; defaults to the file stem.")
    bands: int | None = Field(default=None, ge=1, description="Expected band count; checked.")
    sar: bool | None = Field(
        default=None,
        description="Treat as SAR for co-registration; defaults to sensor == gf3 or role == B with gf3.",
    )

    @property
    def scene_id(self) -> str:
        """The scene id: ``id`` if given, else the file stem."""
        return self.id or self.path.stem

    @property
    def is_sar(self) -> bool:
        """Whether the image is co-registered as SAR: ``sar`` if given, else whether the sensor is GF-3."""
        if self.sar is not None:
            return self.sar
        return self.sensor in SAR_SENSORS


class GridConfig(StrictModel):
    """Reference grid of a group: the reference image's CRS and resolution unless set here."""

    crs: str | None = Field(default=None, description="Target CRS, e.g. 'EPSG:32650'.")
    resolution: float | None = Field(default=None, gt=0, description="Pixel size in CRS units.")
    reference_role: Role = Role.A


class CoregistrationConfig(StrictModel):
    """Global phase correlation plus a RANSAC-filtered local tie-point grid (AROSICS-style)."""

    enabled: bool = True
    window: int = Field(default=256, ge=32, description="Tie-point matching window (px).")
    grid_spacing: int = Field(default=128, ge=16, description="Distance between tie points (px).")
    max_tiepoints: int = Field(default=400, ge=9, description="Spacing widens on large scenes.")
    max_shift_px: float = Field(default=32.0, gt=0, description="Largest shift searched for.")
    min_reliability: float = Field(default=30.0, ge=0, le=100, description="Tie-point gate (%).")
    min_valid_fraction: float = Field(default=0.9, gt=0, le=1)
    ransac_threshold_px: float = Field(default=1.0, gt=0)
    ransac_threshold_sar_px: float = Field(
        default=2.0, gt=0, description="Optical-SAR tie points scatter more (speckle, layover)."
    )
    min_tiepoints: int = Field(default=6, ge=3, description="Fewer kept points → translation only.")
    max_rmse_px: float = Field(default=2.0, gt=0, description="Images above this RMSE are refused.")
    upsample_factor: int = Field(default=50, ge=1, description="Sub-pixel precision 1/upsample px.")
    orientations: int = Field(default=9, ge=3, description="CFOG orientation channels.")


class TilingConfig(StrictModel):
    """Tiles of ``size`` px every ``stride`` px (stride ≤ size), with the black-tile and duplicate filters."""

    size: int = Field(default=512, ge=16)
    stride: int = Field(default=256, ge=1)
    black_threshold: float = Field(
        default=0.95, gt=0, le=1, description="Drop a tile when this fraction of any image is black."
    )
    black_value: float = Field(
        default=5, description="Integer imagery: a pixel whose bands are all <= this is black."
    )
    dedup_overlap: float = Field(
        default=0.8, gt=0, le=1, description="Drop a tile overlapping a kept one by more than this."
    )
    deflate_level: int = Field(
        default=3, ge=1, le=12,
        description=(
            "DEFLATE level of the tiles and the group's grid COGs: 3 costs ~2.5x less CPU than 6 for files "
            "~3 % larger on real imagery; 6 gives the bytes of runs before this setting."
        ),
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> TilingConfig:
        if self.stride > self.size:
            raise ValueError(f"tiling.stride ({self.stride}) must not exceed tiling.size ({self.size})")
        return self


class SplitConfig(StrictModel):
    """Train/val/test fractions (summing to 1) of spatial blocks of ``block_tiles`` tile sizes, seeded."""

    train: float = Field(default=0.7, ge=0, le=1)
    val: float = Field(default=0.15, ge=0, le=1)
    test: float = Field(default=0.15, ge=0, le=1)
    block_tiles: int = Field(
        default=4, ge=1, description="Side of a spatial split block, in tile sizes."
    )
    seed: int = 666

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got {total:g}")
        return self

    @property
    def ratios(self) -> dict[str, float]:
        """The split fractions by split name (``train``, ``val``, ``test``), summing to 1."""
        return {"train": self.train, "val": self.val, "test": self.test}


class Gf2Config(StrictModel):
    """GF-2 PMS L1A reading."""

    pan: bool = Field(
        default=False, description="Add the PAN image, orthorectified onto the MSS grid, as band 'pan'."
    )
    calibration: dict[str, dict[str, tuple[float, float]]] = Field(
        default_factory=dict,
        description=(
            "Radiance = gain * DN + offset: {camera: {band: [gain, offset]}} with camera 'PMS1' or "
            "'PMS2' and band blue, green, red, nir (and pan); CRESDA publishes the table yearly. "
            "Empty: the DN are kept (uint16)."
        ),
    )


class Gf3Config(StrictModel):
    """GF-3 SAR reading: calibration to sigma0 dB, optional speckle filter."""

    polarisations: list[str] | None = Field(
        default=None, description="Polarisations to read (e.g. [HH]); default every one delivered."
    )
    speckle: Literal["none", "lee", "refined_lee"] = "none"
    window: int = Field(default=7, ge=3, description="Speckle filter window (odd, px).")
    looks: float | None = Field(
        default=None, gt=0, description="Equivalent number of looks; default MultilookRange x MultilookAzimuth."
    )

    @field_validator("window")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("the speckle window must be odd")
        return value

    @field_validator("polarisations")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [v.upper() for v in value]


class S2Config(StrictModel):
    """Sentinel-2 L1C / L2A SAFE reading."""

    bands: list[str] = Field(default_factory=lambda: ["B02", "B03", "B04", "B08"])
    resolution: float = Field(default=10.0, gt=0, description="Output pixel size (m); 20/60 m bands resampled.")
    cloud_classes: list[int] = Field(
        default_factory=lambda: [3, 8, 9, 10],
        description="L2A SCL classes masked as nodata (cloud shadow, cloud medium/high, cirrus).",
    )


class ProductsConfig(StrictModel):
    """Provider products (GF-2, GF-3, Sentinel-2 folders or archives) read into georeferenced images."""

    cache: Path | None = Field(
        default=None,
        description="Folder for extracted archives and read products (cache/products, cache/extracted); "
        "default: OUT/cache in prepare, WORKSPACE/cache in ingest.",
    )
    dem: Path | None = Field(default=None, description="DEM for RPC orthorectification (ellipsoidal heights).")
    dem_srs: str | None = Field(default=None, description="The DEM's SRS with vertical datum, e.g. 'EPSG:4326+5773'.")
    height: float | None = Field(
        default=None, description="Constant terrain height (m) without a DEM; default the RPC height offset."
    )
    crs: str | None = Field(
        default=None, description="CRS of orthorectified products; default grid.crs, else the product's UTM zone."
    )
    resolution: float | None = Field(
        default=None, gt=0, description="Pixel size of orthorectified products; default grid.resolution, else the GSD."
    )
    max_archive_bytes: int = Field(default=64 << 30, gt=0, description="Refuse archives expanding beyond this.")
    max_archive_members: int = Field(default=20_000, gt=0)
    gf2: Gf2Config = Gf2Config()
    gf3: Gf3Config = Gf3Config()
    s2: S2Config = S2Config()


class PrepareConfig(StrictModel):
    """Configuration of `changeflow prepare`."""

    scenes: list[SceneEntry] = Field(default_factory=list)
    scene_list: Path | None = Field(
        default=None, description="A separate YAML scene list (a list of scenes, or a 'scenes:' key)."
    )
    inbox: Path | None = Field(
        default=None,
        description="Folder with {base}_{A|B|D|E}.{tif|png} and/or GF-2, GF-3, Sentinel-2 products (folders or archives).",
    )
    inbox_sensors: dict[Role, Sensor] = Field(
        default_factory=lambda: {Role.A: Sensor.gf2, Role.B: Sensor.gf3, Role.C: Sensor.s2},
        description="Sensor assumed for each role of an inbox file.",
    )
    georeferenced: bool = Field(
        default=True, description="False accepts images without CRS; tiles are in pixel space."
    )
    min_overlap: float = Field(default=0.8, gt=0, le=1)
    label_encoding: LabelEncodingSetting = Field(
        default="auto",
        description=(
            "auto: from each label's values (0/255 → binary255, 0/1/255 → change01); change01: 0 no change, "
            "1 change, 255 ignore; binary255: GOLD's 0/255 masks (> 127 = change)."
        ),
    )
    expected_bands: dict[Role, int] = Field(default_factory=dict)
    footprint_max_size: int = Field(default=2048, ge=64, description="Mask size for footprints.")
    block_size: int = Field(default=1024, ge=64, description="Block size for streamed I/O (px).")
    threads: int | None = Field(
        default=None, ge=1,
        description=(
            "Threads for the catalog's footprints and, per group, the grid images and tile compression; "
            "default min(4, CPUs). Outputs do not depend on it; memory grows with it."
        ),
    )
    grid: GridConfig = GridConfig()
    coregistration: CoregistrationConfig = CoregistrationConfig()
    tiling: TilingConfig = TilingConfig()
    split: SplitConfig = SplitConfig()
    products: ProductsConfig = ProductsConfig()

    @property
    def thread_count(self) -> int:
        """``threads``, or min(4, CPUs) when unset: GDAL releases the GIL, a few threads keep the cores busy."""
        return self.threads or min(4, os.cpu_count() or 1)

    @model_validator(mode="after")
    def _has_input(self) -> PrepareConfig:
        if not self.scenes and self.inbox is None and self.scene_list is None:
            raise ValueError("give scenes ('scenes' or 'scene_list') or an inbox folder ('inbox')")
        return self

    @field_validator("expected_bands")
    @classmethod
    def _label_has_one_band(cls, value: dict[Role, int]) -> dict[Role, int]:
        if any(count != 1 for role, count in value.items() if role.is_label):
            raise ValueError("a label raster has exactly one band")
        return value


def _format_validation_error(path: Path, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            lines.append(f"'{key}': {item['msg']}")
    return f"{path}: invalid config: " + "; ".join(lines)


def _read_yaml(path: Path, what: str) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_config(path: Path, model: type[StrictModel] = PrepareConfig) -> StrictModel:
    """Read and validate a YAML config; relative paths are resolved against the file's folder.

    Args:
        path: the YAML config file.
        model: the config class to validate against (PrepareConfig, TrainConfig, DetectConfig, RunConfig,
            IngestConfig).

    Returns:
        The validated config, an instance of ``model``, with its paths made absolute.

    Raises:
        ConfigError: the file is missing, is not valid YAML, is not a mapping at the top level, or has
            unknown keys or bad values (the message names the file and each key).
    """
    path = Path(path)
    raw = _read_yaml(path, "config file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(resolve_paths(model, raw, path.resolve().parent))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from None


def resolve_paths(model: type[StrictModel], values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the relative paths of a config's raw values absolute relative to ``base`` (its file's folder).

    Every field typed ``Path`` is resolved, at any depth (scene paths, ``products.dem``, ``text.prompts``,
    ...), and so are the free-form sections a config validates later (its ``sections``: ``train`` and
    ``detect`` of a RunConfig, ``prepare`` and ``detect`` of an IngestConfig), so that no path is ever
    read relative to the working directory or to the folder a stage config is copied to.

    Args:
        model: the config class the values are for.
        values: the raw values (as read from YAML); values of the wrong type are left for validation.
        base: the folder relative paths are relative to.

    Returns:
        A copy of ``values`` with absolute paths.
    """
    sections = getattr(model, "sections", {})
    resolved = {}
    for key, value in values.items():
        if key in sections and isinstance(value, dict):
            resolved[key] = resolve_paths(sections[key], value, base)
        elif key in model.model_fields:
            resolved[key] = _absolute(model.model_fields[key].annotation, value, base)
        else:
            resolved[key] = value  # an unknown key: validation names it
    return resolved


def _absolute(annotation: Any, value: Any, base: Path) -> Any:
    """``value`` of a field typed ``annotation``, with its relative paths made absolute."""
    kinds = get_args(annotation) or (annotation,)
    if isinstance(value, (str, Path)) and Path in kinds:
        return value if Path(value).is_absolute() else base / value
    if isinstance(value, list) and get_origin(annotation) is list:
        return [_absolute(kinds[0], item, base) for item in value]
    models = [kind for kind in kinds if isinstance(kind, type) and issubclass(kind, StrictModel)]
    if isinstance(value, dict) and models:
        return resolve_paths(models[0], value, base)
    return value


def load_scene_list(path: Path) -> list[SceneEntry]:
    """Scenes of a YAML scene list; relative paths are resolved against the list's folder.

    Args:
        path: the YAML scene list: a list of scenes, or a mapping with a ``scenes:`` key.

    Returns:
        One validated SceneEntry per item, in file order, with absolute paths.

    Raises:
        ConfigError: the file is missing, is not valid YAML, holds no list of scenes, or a scene has
            unknown keys or bad values (the message names the file and ``scenes.<index>.<key>``).
    """
    raw = _read_yaml(path, "scene list")
    items = raw.get("scenes") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ConfigError(f"{path}: expected a list of scenes (or a 'scenes:' key)")
    entries = []
    for index, item in enumerate(items):
        try:
            entry = SceneEntry.model_validate(item)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(path, exc).replace("'", f"'scenes.{index}.", 1)) from None
        entries.append(entry if entry.path.is_absolute() else entry.model_copy(update={"path": path.parent / entry.path}))
    return entries


class TextConfig(StrictModel):
    """Prompt embeddings of text-guided models (SegChange-R1); see :mod:`pipeline.learn.prompts`."""

    source: Literal["minilm", "file", "hash", "none"] = Field(
        default="minilm",
        description="minilm: the offline MiniLM encoder (extra 'text'); file: precomputed embeddings; "
        "hash: dependency-free test embeddings; none: no text.",
    )
    prompt: str | None = Field(default=None, description="Prompt for every tile (overrides the file's default).")
    prompts: Path | None = Field(default=None, description="Per-tile / per-group prompts (YAML, CSV or prompts.txt).")
    embeddings: Path | None = Field(default=None, description="Embedding file for source 'file'.")
    max_tokens: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _has_prompts(self) -> TextConfig:
        if self.source != "none" and self.prompt is None and self.prompts is None:
            raise ValueError("text needs 'prompt' or 'prompts' (or source: none)")
        if self.source == "file" and self.embeddings is None:
            raise ValueError("text source 'file' needs 'embeddings'")
        return self


LabelFreeMethod = Literal["cva", "irmad", "log_ratio", "mean_ratio", "npsg"]


class EarlyStoppingConfig(StrictModel):
    """Stop training when a validation metric has not improved for ``patience`` validations."""

    patience: int = Field(default=5, ge=1, description="Validations without improvement before stopping.")
    min_delta: float = Field(default=0.0, ge=0, description="The least rise of the metric that counts.")
    metric: Literal["iou", "f1", "kappa", "oa", "precision", "recall"] = "iou"


class SamplingConfig(StrictModel):
    """Which training samples are drawn: a share of them hold change (class-balanced crops)."""

    change_share: float | None = Field(
        default=None, ge=0, le=1, description="Share of drawn samples that are crops around a change pixel of a "
        "tile with change; null: one shuffled pass over the train tiles per epoch.")


class PseudoLabelConfig(StrictModel):
    """Labels from the confident parts of a label-free map (see :mod:`pipeline.learn.pseudo_labels`)."""

    method: LabelFreeMethod
    margin: float = Field(default=0.3, gt=0, lt=0.5, description="Confident: the method's probability is above "
                          "0.5 + margin (change) or below 0.5 − margin (no change); the rest is ignored (255).")
    keep_labels: bool = Field(default=True, description="Where a tile has a real label (0 or 1) it wins; false: "
                              "train and validate on the pseudo-labels alone.")
    self_training: bool = Field(default=False, description="One more round: the model trained on the method's "
                                "labels (OUT/round1) re-labels the tiles with its confident pixels, then the final "
                                "model trains on those (one process; not under torchrun).")


class TrainConfig(StrictModel):
    """Configuration of `changeflow train`."""

    data: Path = Field(description="A prepare output folder (catalog.gpkg + tiles/) or a LEVIR-style folder.")
    folder_labels: LabelEncoding = Field(
        default="binary255", description="Label encoding of a LEVIR-style folder (prepare output: 0/1/255)."
    )
    model: str = "fc_siam_diff"
    model_options: dict[str, Any] = Field(default_factory=dict)
    loss_options: dict[str, Any] = Field(default_factory=dict)
    inputs: tuple[str, str] = Field(default=("A", "B"), description="Roles of t1 and t2, in forward order.")
    teacher_input: str = Field(default="C", description="Role of the teacher's extra input (GOLD).")
    modalities: dict[str, Literal["optical", "sar"]] = Field(
        default_factory=lambda: {"A": "optical", "B": "sar", "C": "optical"}
    )
    epochs: int = Field(default=20, ge=1, description="The most epochs (validations); max_steps and "
                        "max_minutes may stop earlier.")
    max_steps: int | None = Field(default=None, ge=1, description="Optimiser-step budget; an epoch then has at "
                                  "least ceil(max_steps / epochs) steps, so a few tiles do not force many epochs.")
    max_minutes: float | None = Field(default=None, gt=0, description="Training-time budget (minutes).")
    steps_per_epoch: int | None = Field(default=None, ge=1, description="Steps between validations; default one "
                                        "pass over the train tiles (or more, see max_steps).")
    early_stopping: EarlyStoppingConfig | None = None
    sampling: SamplingConfig = SamplingConfig()
    pseudo_labels: PseudoLabelConfig | None = Field(
        default=None, description="Train on the confident pixels of a label-free method's map (a method name "
        "or {method, margin, keep_labels, self_training}).")
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-2, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    scheduler: Literal["cosine", "none"] = "cosine"
    grad_clip: float | None = Field(default=1.0, gt=0)
    amp: bool = True
    seed: int = 0
    workers: int = Field(default=2, ge=0)
    crop: int | None = Field(default=None, ge=16)
    augment: bool = True
    allow_no_change: bool = Field(
        default=False, description="Train even when the train or val labels hold no change pixel (warns)."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    text: TextConfig | None = Field(default=None, description="Prompts of text-guided models.")

    @field_validator("pseudo_labels", mode="before")
    @classmethod
    def _method_name(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value


class VectorizeConfig(StrictModel):
    """Change polygons: sieve small regions, drop small polygons, simplify."""

    sieve_px: int = Field(default=16, ge=0, description="Regions smaller than this (px) are merged away.")
    min_area_m2: float = Field(default=50.0, ge=0)
    simplify_px: float = Field(default=1.0, ge=0, description="Topology-preserving, in pixels.")


class DetectConfig(StrictModel):
    """Configuration of `changeflow detect` (and of the detect step of `changeflow run`)."""

    prepared: Path = Field(description="A `changeflow prepare` output folder.")
    checkpoint: Path | None = Field(default=None, description="A trained model; or give `method` instead.")
    method: LabelFreeMethod | None = Field(
        default=None, description="A label-free method instead of a checkpoint: cva or irmad (optical A + C), "
        "log_ratio or mean_ratio (SAR A + B), npsg (heterogeneous A + B).")
    groups: list[SafeName] | None = Field(default=None, description="Groups to detect; default all prepared.")
    window: int | None = Field(default=None, ge=16, description="Default: the training tile size.")
    overlap: float = Field(default=0.5, ge=0, lt=1)
    weighting: Literal["gaussian", "uniform"] = "gaussian"
    tta: bool = False
    batch_size: int = Field(default=8, ge=1)
    block_size: int = Field(default=2048, ge=64)
    probability_dtype: Literal["uint8", "float32"] = "uint8"
    threshold: float = Field(default=0.5, gt=0, lt=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prompt: str | None = Field(default=None, description="Text-guided models: prompt for every group "
                               "(default: the training prompt of the group).")
    dask_address: str | None = Field(default=None, description="Detect the groups as tasks on this Dask "
                                     "scheduler (tcp://HOST:PORT); GPU work goes to workers with the resource GPU.")
    block_tasks: bool = Field(default=False, description="On a Dask cluster, also split each scene into block "
                              "tasks (one huge scene across workers); same rasters, bit for bit.")
    threads: int | None = Field(default=None, ge=1, description="torch threads per detection process or Dask "
                                "task (default: the process's; Dask's nanny sets 1).")
    vectorize: VectorizeConfig = VectorizeConfig()
    evaluate: bool = Field(default=True, description="Score against the group's label when it has one.")

    @model_validator(mode="after")
    def _checkpoint_or_method(self) -> DetectConfig:
        if (self.checkpoint is None) == (self.method is None):
            raise ValueError("give exactly one of 'checkpoint' (a trained model) and 'method' (a label-free "
                             f"method: {', '.join(get_args(LabelFreeMethod))}), not "
                             + ("both" if self.checkpoint is not None else "neither"))
        return self


class RunConfig(StrictModel):
    """`changeflow run`: prepare → train → detect → evaluate from one file.

    ``train`` and ``detect`` take the keys of TrainConfig and DetectConfig except the paths the
    run fills in (``data``; ``prepared`` and ``checkpoint``). With a label-free ``detect.method`` and
    no ``train`` section the run does not train. ``compare`` names label-free methods that also detect
    every group, with the ``detect`` settings, to be compared with the trained model.
    """

    prepare: PrepareConfig
    train: dict[str, Any] = Field(default_factory=dict)
    detect: dict[str, Any] = Field(default_factory=dict)
    compare: list[LabelFreeMethod] = Field(
        default_factory=list, description="Label-free methods run beside the trained model; the run writes "
        "comparison.md / comparison.json with their scores side by side (groups with a label).")
    # The configs the free-form sections become: their paths resolve against this file's folder too.
    sections: ClassVar[dict[str, type[StrictModel]]] = {"train": TrainConfig, "detect": DetectConfig}

    @property
    def trains(self) -> bool:
        """Whether the run trains a model: not when ``detect.method`` is label-free and there is no ``train``."""
        return bool(self.train) or not self.detect.get("method")

    def train_config(self, prepared: Path) -> TrainConfig:
        """The training config of the run: the ``train`` keys with ``data`` set to the prepared folder.

        Args:
            prepared: the prepare output folder of the run.

        Returns:
            The validated TrainConfig.

        Raises:
            ConfigError: a ``train`` key is unknown or has a bad value (the message names section and key).
        """
        return _section(TrainConfig, "train", {**self.train, "data": prepared})

    def detect_config(self, prepared: Path, checkpoint: Path) -> DetectConfig:
        """The detection config of the run: the ``detect`` keys with the prepared folder and checkpoint set.

        Args:
            prepared: the prepare output folder of the run.
            checkpoint: the model checkpoint trained by the run.

        Returns:
            The validated DetectConfig.

        Raises:
            ConfigError: a ``detect`` key is unknown or has a bad value (the message names section and key).
        """
        # A label-free `method` replaces the trained checkpoint.
        model = {} if self.detect.get("method") else {"checkpoint": checkpoint}
        return _section(DetectConfig, "detect", {**self.detect, "prepared": prepared, **model})

    def compare_config(self, prepared: Path, method: str) -> DetectConfig:
        """The detection config of one ``compare`` method: the ``detect`` keys with ``method`` instead of a model.

        Args:
            prepared: the prepare output folder of the run.
            method: a label-free method of ``compare``.

        Returns:
            The validated DetectConfig.

        Raises:
            ConfigError: a ``detect`` key is unknown or has a bad value (the message names section and key).
        """
        return _section(DetectConfig, "detect", {**self.detect, "prepared": prepared, "method": method})


def _section(model: type[StrictModel], name: str, values: dict[str, Any]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(Path(name), exc)) from None


class IngestConfig(StrictModel):
    """`changeflow serve` / the ingest flow: an inbox watched on a schedule.

    ``prepare`` and ``detect`` take the keys of PrepareConfig and DetectConfig except the inputs
    the flow fills in (scenes and inbox; prepared folder and checkpoint).
    """

    inbox: Path
    workspace: Path = Field(description="State, archive, prepared groups and detections.")
    checkpoint: Path | None = Field(default=None, description="A trained model; or give `method` instead.")
    method: LabelFreeMethod | None = Field(default=None, description="A label-free method instead of a checkpoint.")
    settle_seconds: float = Field(default=60.0, ge=0, description="Files younger than this wait.")
    max_attempts: int = Field(default=3, ge=1, description="Passes that try a failing group before it is "
                              "given up (its scenes go to rejected/ with the last error).")
    prepare: dict[str, Any] = Field(default_factory=dict)
    detect: dict[str, Any] = Field(default_factory=dict)
    # The configs the free-form sections become: their paths resolve against this file's folder too.
    sections: ClassVar[dict[str, type[StrictModel]]] = {"prepare": PrepareConfig, "detect": DetectConfig}

    def prepare_config(self, scenes: list[SceneEntry]) -> PrepareConfig:
        """The prepare config for newly claimed scenes; read products are cached in ``WORKSPACE/cache``.

        Args:
            scenes: the scenes claimed from the inbox.

        Returns:
            The validated PrepareConfig (``products.cache`` defaults to ``WORKSPACE/cache``).

        Raises:
            ConfigError: a ``prepare`` key is unknown or has a bad value (the message names section and key).
        """
        values = {**self.prepare, "scenes": scenes}
        products = values.get("products") or {}
        if isinstance(products, dict):  # read products are cached in the workspace by default
            values["products"] = {"cache": self.workspace / "cache", **products}
        return _section(PrepareConfig, "prepare", values)

    def detect_config(self) -> DetectConfig:
        """The detection config: the ``detect`` keys on ``WORKSPACE/prepared`` with the flow's checkpoint or method.

        Returns:
            The validated DetectConfig.

        Raises:
            ConfigError: a ``detect`` key is unknown or has a bad value, or not exactly one of
                ``checkpoint`` and ``method`` is given (the message names section and key).
        """
        model = {key: value for key, value in (("checkpoint", self.checkpoint), ("method", self.method))
                 if value is not None}
        return _section(DetectConfig, "detect", {**self.detect, "prepared": self.workspace / "prepared", **model})
