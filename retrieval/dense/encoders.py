"""Bi-encoders: a sentence-transformers model behind ``encode_queries`` / ``encode_documents``.

Pooling and normalisation come from the model's own folder (``modules.json``, ``1_Pooling``,
``config_sentence_transformers.json``); query/document prefixes from its ``prompts`` or, for a few
well-known hub models that predate prompts (e5, bge), from :data:`KNOWN_PREFIXES`.
Nothing here downloads at import; loading a hub name needs internet or a filled HF cache.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from retrieval.dense.cpu import has_fast_bf16
from retrieval.errors import MissingDependency
from retrieval.models import resolve_model
from retrieval.types import Document

logger = logging.getLogger(__name__)

# Exact hub names whose model cards ask for prefixes but whose folders do not declare them.
KNOWN_PREFIXES: dict[str, tuple[str, str]] = {
    "intfloat/e5-small-v2": ("query: ", "passage: "),
    "intfloat/e5-base-v2": ("query: ", "passage: "),
    "intfloat/e5-large-v2": ("query: ", "passage: "),
    "intfloat/multilingual-e5-small": ("query: ", "passage: "),
    "intfloat/multilingual-e5-base": ("query: ", "passage: "),
    "BAAI/bge-small-en-v1.5": ("Represent this sentence for searching relevant passages: ", ""),
    "BAAI/bge-base-en-v1.5": ("Represent this sentence for searching relevant passages: ", ""),
    "BAAI/bge-large-en-v1.5": ("Represent this sentence for searching relevant passages: ", ""),
}
QUERY_PROMPT_NAMES = ("query",)
BACKENDS = ("torch", "onnx")
DOC_PROMPT_NAMES = ("document", "passage", "doc", "corpus")


@dataclass
class EncoderConfig:
    """How a bi-encoder was loaded; stored in index manifests so a reload can be checked."""

    model: str = "minilm"
    int8: bool = False
    backend: str = "torch"
    bf16: bool = False
    max_seq_length: int | None = None
    query_prefix: str | None = None
    doc_prefix: str | None = None
    batch_size: int = 32
    device: str | None = None
    show_progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sentence_transformers():
    try:
        import sentence_transformers
    except ImportError as exc:
        raise MissingDependency("dense retrieval needs sentence-transformers: pip install 'retrievekit[dense]'") from exc
    return sentence_transformers


def _model_prefixes(model: Any, name: str) -> tuple[str, str]:
    """(query, document) prefixes declared by the model's ``prompts``, else the known table, else none."""
    prompts = dict(getattr(model, "prompts", None) or {})
    query = next((prompts[p] for p in QUERY_PROMPT_NAMES if prompts.get(p)), None)
    doc = next((prompts[p] for p in DOC_PROMPT_NAMES if prompts.get(p)), None)
    if query is None and doc is None and name in KNOWN_PREFIXES:
        return KNOWN_PREFIXES[name]
    return query or "", doc or ""


def _model_normalizes(model: Any) -> bool:
    """True when the model ends in a Normalize module or scores by cosine (so unit vectors are exact)."""
    if any(type(m).__name__ == "Normalize" for m in model.modules()):
        return True
    return getattr(model, "similarity_fn_name", None) in (None, "cosine")


def _pooling_mode(model: Any) -> str:
    for module in model.modules():
        if type(module).__name__ == "Pooling":
            mode = getattr(module, "pooling_mode", None)
            if isinstance(mode, str):
                return mode
            config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
            return next((k[len("pooling_mode_"):] for k, v in config.items()
                         if k.startswith("pooling_mode_") and v is True), "unknown")
    return "unknown"


class BiEncoder:
    """A sentence-transformers model that embeds queries and documents as float32 numpy arrays.

    ``encode`` sorts texts by length inside sentence-transformers (one padded length per batch);
    ``backend="onnx"`` runs a fused ONNX Runtime export of the transformer instead of torch (``onnx_backend.py``;
    CPU; same vectors in fp32, and one query in ~2.5 ms instead of ~8). ``int8=True`` swaps nn.Linear for
    dynamically quantised int8 kernels (torch, ``quantize.py``) or quantises the ONNX graph; CPU only.
    ``bf16=True`` runs the fp32 weights under bfloat16 autocast (matrix products in bf16, reductions and
    outputs in fp32): 2.6-3x fp32 on CPUs with AMX/AVX512-BF16 at ~0.99998 cosine, also on GPUs.
    """

    def __init__(self, model: Any, config: EncoderConfig, cache_dir: str | None = None) -> None:
        if config.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {config.backend!r}")
        if config.bf16 and config.int8:
            raise ValueError("int8=True and bf16=True are two different fast paths; pick one")
        if config.bf16 and config.backend == "onnx":
            raise ValueError("bf16=True runs in torch; use backend='torch' (or int8=True with backend='onnx')")
        self.model = model
        self.onnx: Any = None
        self.config = config
        self.model_name = config.model
        if config.max_seq_length is not None:
            if config.max_seq_length < 1:
                raise ValueError(f"max_seq_length must be >= 1, got {config.max_seq_length}")
            model.max_seq_length = config.max_seq_length
        query_prefix, doc_prefix = _model_prefixes(model, config.model)
        self.query_prefix = query_prefix if config.query_prefix is None else config.query_prefix
        self.doc_prefix = doc_prefix if config.doc_prefix is None else config.doc_prefix
        self.normalize = _model_normalizes(model)
        self.pooling = _pooling_mode(model)
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if not dim:
            raise ValueError(f"model {config.model!r} does not report its embedding dimension")
        self.dim = int(dim)
        if config.backend == "onnx":
            from retrieval.dense.onnx import OnnxEncoder, OnnxSettings

            self.onnx = OnnxEncoder(model, OnnxSettings(quantize=config.int8), cache_dir=cache_dir)
        elif config.int8:
            from retrieval.dense.quantize import quantize_linear_int8

            self.model = quantize_linear_int8(model)
        if config.bf16 and self.device_type == "cpu" and not has_fast_bf16():
            logger.warning("bf16=True on a CPU without AVX512-BF16/AMX: PyTorch emulates bf16 there, so encoding "
                           "is likely slower than fp32")

    @classmethod
    def from_model(cls, model: Any, *, model_name: str | None = None, int8: bool = False, backend: str = "torch",
                   bf16: bool = False, cache_dir: str | None = None, max_seq_length: int | None = None, query_prefix: str | None = None,
                   doc_prefix: str | None = None, batch_size: int = 32, device: str | None = None,
                   show_progress: bool = True) -> "BiEncoder":
        """Wrap an in-memory ``SentenceTransformer`` (e.g. one just trained)."""
        name = model_name or getattr(getattr(model, "model_card_data", None), "base_model", None) or "in-memory"
        config = EncoderConfig(model=str(name), int8=int8, backend=backend, bf16=bf16, max_seq_length=max_seq_length,
                               query_prefix=query_prefix, doc_prefix=doc_prefix, batch_size=batch_size,
                               device=device, show_progress=show_progress)
        return cls(model, config, cache_dir=cache_dir)

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def device_type(self) -> str:
        """``cpu``, ``cuda``... of the torch model (``cpu`` for the ONNX path)."""
        device = getattr(self.model, "device", None)
        return str(getattr(device, "type", "cpu"))

    def _precision(self) -> contextlib.AbstractContextManager[Any]:
        if not self.config.bf16:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)

    def describe(self) -> dict[str, Any]:
        """What a saved index must agree with: model, dimension, normalisation, pooling, prefixes."""
        return {"model": self.model_name, "dim": self.dim, "normalize": self.normalize, "pooling": self.pooling,
                "query_prefix": self.query_prefix, "doc_prefix": self.doc_prefix,
                "max_seq_length": self.max_seq_length, "int8": self.config.int8, "backend": self.config.backend,
                "bf16": self.config.bf16}

    def _encode(self, texts: list[str], prefix: str, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.onnx is not None:
            return self.onnx.encode(texts, prompt=prefix or None, batch_size=self.config.batch_size,
                                    normalize=self.normalize, show_progress=show_progress)
        with self._precision():
            emb = self.model.encode(texts, prompt=prefix or None, batch_size=self.config.batch_size,
                                    show_progress_bar=show_progress, convert_to_numpy=True,
                                    normalize_embeddings=self.normalize)
        return np.ascontiguousarray(emb, dtype=np.float32)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Embed queries (with the query prefix): float32 array of shape (n, dim)."""
        if isinstance(queries, str):
            raise TypeError("encode_queries takes a list of strings")
        return self._encode(list(queries), self.query_prefix, show_progress=False)

    def encode_documents(self, docs: Sequence[Document | str], show_progress: bool | None = None) -> np.ndarray:
        """Embed documents (title + " " + text, as BEIR does, with the document prefix): (n, dim) float32."""
        if isinstance(docs, str):
            raise TypeError("encode_documents takes a list of Documents or strings")
        texts = [d.full_text if isinstance(d, Document) else str(d) for d in docs]
        progress = self.config.show_progress if show_progress is None else show_progress
        return self._encode(texts, self.doc_prefix, show_progress=progress and len(texts) > self.config.batch_size)


def load_encoder(model: str = "minilm", *, int8: bool = False, backend: str = "torch", bf16: bool = False,
                 cache_dir: str | None = None, max_seq_length: int | None = None,
                 query_prefix: str | None = None, doc_prefix: str | None = None, batch_size: int = 32,
                 device: str | None = None, show_progress: bool = True) -> BiEncoder:
    """Load a bi-encoder by alias (``minilm``: bundled, offline), local folder, or hub name.

    ``backend="onnx"`` runs the model in ONNX Runtime (CPU; export cached in ``cache_dir``, default
    ``~/.cache/retrievekit/onnx``; needs ``pip install onnxruntime onnx``). ``int8=True`` picks the CPU int8 path
    of either backend (dynamic nn.Linear in torch, a quantised graph in ONNX Runtime).
    ``bf16=True`` encodes under bfloat16 autocast (fast on AMX/AVX512-BF16 CPUs and on GPUs).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ref = resolve_model(model)
    if (int8 or backend == "onnx") and device not in (None, "cpu"):
        raise ValueError(f"int8=True and backend='onnx' run on CPU only; got device={device!r}")
    if int8 and bf16:
        raise ValueError("int8=True and bf16=True are two different fast paths; pick one")
    st = _sentence_transformers()
    logger.info("loading bi-encoder %s from %s", model, ref.path)
    cpu_only = int8 or backend == "onnx"
    st_model = st.SentenceTransformer(ref.path, device="cpu" if cpu_only else device, local_files_only=ref.is_local)
    config = EncoderConfig(model=str(model), int8=int8, backend=backend, bf16=bf16, max_seq_length=max_seq_length,
                           query_prefix=query_prefix, doc_prefix=doc_prefix, batch_size=batch_size, device=device,
                           show_progress=show_progress)
    return BiEncoder(st_model, config, cache_dir=cache_dir)
