"""The model registry, model references that survive a change of folder, and folder fingerprints."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from retrieval.errors import MissingDependency
from retrieval.rerank.llm.gguf_parts import joined_gguf
from retrieval.models import (DEFAULT_EMBEDDER, DEFAULT_LLM, MODELS, ModelSpec, bundled, folder_fingerprint,
                              model_reference, model_spec, resolve_model)


def test_registry_names_each_model_once_with_its_kind():
    names = [n for spec in MODELS for n in (spec.alias, *spec.other_names)]
    assert len(names) == len(set(names))
    assert model_spec(DEFAULT_EMBEDDER).kind == "bi-encoder" and model_spec(DEFAULT_LLM).kind == "causal-lm"
    assert model_spec("sentence-transformers/all-MiniLM-L6-v2") is model_spec(DEFAULT_EMBEDDER)
    assert DEFAULT_EMBEDDER in bundled("bi-encoder") and bundled("causal-lm") == [DEFAULT_LLM, "gemma3-270m"]
    assert model_spec("intfloat/e5-small-v2").prefixes == ("query: ", "passage: ")
    assert model_spec(DEFAULT_EMBEDDER).prefixes is None and model_spec("no/such") is None
    with pytest.raises(ValueError, match="kind must be one of"):
        ModelSpec("x", "cross-encoder")


def test_aliases_resolve_to_their_package_folder_and_stay_aliases_in_references():
    pytest.importorskip(model_spec(DEFAULT_EMBEDDER).module)
    ref = resolve_model(DEFAULT_EMBEDDER)
    assert ref.alias == DEFAULT_EMBEDDER and (Path(ref.path) / "modules.json").is_file()
    assert model_reference(DEFAULT_EMBEDDER) == (DEFAULT_EMBEDDER, "bundled")
    assert model_reference("BAAI/bge-small-en-v1.5") == ("BAAI/bge-small-en-v1.5", "hub")
    gguf = resolve_model(DEFAULT_LLM) if model_spec(DEFAULT_LLM).module else None
    assert gguf is None or gguf.gguf_file == model_spec(DEFAULT_LLM).gguf_file


def test_a_missing_package_says_what_to_install(monkeypatch):
    import retrieval.models as models

    fake = ModelSpec("ghost", "bi-encoder", package="no-such-package-xyz", folder="model")
    monkeypatch.setitem(models._BY_NAME, "ghost", fake)
    with pytest.raises(MissingDependency, match="pip install no-such-package-xyz"):
        resolve_model("ghost")


def _parts_module(tmp_path: Path, chunks: list[bytes], digest: str | None = None) -> SimpleNamespace:
    """A stand-in for a package shipping a GGUF in parts: ``chunk_paths()`` and ``EXPECTED_SHA256``."""
    paths = []
    for i, chunk in enumerate(chunks):
        paths.append(tmp_path / "site" / f"m.gguf.part{i:02d}")
        paths[-1].parent.mkdir(exist_ok=True)
        paths[-1].write_bytes(chunk)
    whole = hashlib.sha256(b"".join(chunks)).hexdigest()
    return SimpleNamespace(__name__="fake_parts", chunk_paths=lambda: paths, EXPECTED_SHA256=digest or whole)


def test_split_gguf_is_joined_once_atomically_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVEKIT_CACHE", str(tmp_path / "cache"))
    chunks = [b"GGUF" + bytes(range(256)) * 5000, b"\x00" * 3, bytes(range(7))]   # a part spans read blocks
    module = _parts_module(tmp_path, chunks)
    out = joined_gguf(module, "m.gguf")
    assert out.read_bytes() == b"".join(chunks) and out.name.endswith(".gguf")
    stamp = out.stat().st_mtime_ns
    assert joined_gguf(module, "m.gguf") == out and out.stat().st_mtime_ns == stamp   # reused, not rewritten
    assert [p.name for p in out.parent.iterdir()] == [out.name]                          # no temp file left


def test_split_gguf_with_a_bad_or_missing_part_fails_clearly_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVEKIT_CACHE", str(tmp_path / "cache"))
    corrupt = _parts_module(tmp_path, [b"abc", b"def"], digest="0" * 64)
    with pytest.raises(ValueError, match="fake_parts: the 2 parts of m.gguf join to sha256"):
        joined_gguf(corrupt, "m.gguf")
    assert not any((tmp_path / "cache" / "gguf").iterdir())
    missing = _parts_module(tmp_path, [b"abc"])
    missing.chunk_paths()[0].unlink()
    with pytest.raises(FileNotFoundError, match="missing parts of m.gguf"):
        joined_gguf(missing, "m.gguf")
    with pytest.raises(ValueError, match="no EXPECTED_SHA256"):
        joined_gguf(SimpleNamespace(__name__="bare", chunk_paths=lambda: []), "m.gguf")


def test_gemma_alias_resolves_to_the_checked_joined_file(tmp_path, monkeypatch):
    module = pytest.importorskip(model_spec("gemma3-270m").module)
    monkeypatch.setenv("RETRIEVEKIT_CACHE", str(tmp_path))
    ref = resolve_model("gemma3-270m")
    path = Path(ref.path) / ref.gguf_file
    assert ref.alias == "gemma3-270m" and path.parent == tmp_path / "gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    assert path.stat().st_size == sum(Path(p).stat().st_size for p in module.chunk_paths())


def test_local_folders_are_referenced_by_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_reference("m") == (str(tmp_path.resolve() / "m"), "local")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model("./gone/model")


def write_folder(folder: Path, pooling: str = "mean", weights: bytes = b"w" * 10) -> Path:
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps([{"path": ""}, {"path": "1_Pooling"}]))
    (folder / "config.json").write_text('{"hidden_size": 32}')
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": pooling}))
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "README.md").write_text("notes")
    return folder


def test_fingerprint_follows_config_pooling_and_weights_but_not_notes(tmp_path):
    base = folder_fingerprint(write_folder(tmp_path / "a"))
    assert len(base) == 64 and folder_fingerprint(write_folder(tmp_path / "b")) == base
    (tmp_path / "b" / "README.md").write_text("other notes")
    assert folder_fingerprint(tmp_path / "b") == base
    assert folder_fingerprint(write_folder(tmp_path / "c", pooling="cls")) != base
    assert folder_fingerprint(write_folder(tmp_path / "d", weights=b"v" * 10)) != base
    big = bytearray(4 << 20)
    big[2 << 20] = 1   # a change in the middle of a large weight file is sampled
    e = folder_fingerprint(write_folder(tmp_path / "e", weights=bytes(4 << 20)))
    assert folder_fingerprint(write_folder(tmp_path / "f", weights=bytes(big))) != e
    assert folder_fingerprint(tmp_path / "nothing") is None
