"""The model registry, model references that survive a change of folder, and folder fingerprints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.errors import MissingDependency
from retrieval.models import (DEFAULT_EMBEDDER, DEFAULT_LLM, MODELS, ModelSpec, bundled, folder_fingerprint,
                              model_reference, model_spec, resolve_model)


def test_registry_names_each_model_once_with_its_kind():
    names = [n for spec in MODELS for n in (spec.alias, *spec.other_names)]
    assert len(names) == len(set(names))
    assert model_spec(DEFAULT_EMBEDDER).kind == "bi-encoder" and model_spec(DEFAULT_LLM).kind == "causal-lm"
    assert model_spec("sentence-transformers/all-MiniLM-L6-v2") is model_spec(DEFAULT_EMBEDDER)
    assert DEFAULT_EMBEDDER in bundled("bi-encoder") and bundled("causal-lm") == [DEFAULT_LLM]
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
