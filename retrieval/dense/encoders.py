"""Bi-encoders: a sentence-transformers model behind ``encode_queries`` / ``encode_documents``.

Pooling and normalisation come from the model's own folder (``modules.json``, ``1_Pooling``,
``config_sentence_transformers.json``); query/document prefixes from its ``prompts`` or, for a few
well-known hub models that predate prompts (e5, bge), from the model registry (:mod:`retrieval.models`).
Nothing here downloads at import; loading a hub name needs internet or a filled HF cache.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.configs import Config, check_type, field_names
from retrieval.dense.cpu import has_fast_bf16
from retrieval.errors import MissingDependency
from retrieval.models import (DEFAULT_EMBEDDER, bundled, folder_fingerprint, model_reference, model_spec,
                              resolve_model)
from retrieval.types import Document, typed_list

logger = logging.getLogger(__name__)

QUERY_PROMPT_NAMES = ("query",)
BACKENDS = ("torch", "onnx", "openvino")
DOC_PROMPT_NAMES = ("document", "passage", "doc", "corpus")


@dataclass(frozen=True)
class EncoderConfig(Config):
    """How a bi-encoder is loaded and run: the one list of encoder options (the CLI flags, ``load_encoder``'s
    keywords and ``Retriever.from_documents``'s dense options are all made from these fields)."""

    model: str = field(default=DEFAULT_EMBEDDER, metadata={
        "help": f"bi-encoder: alias ({DEFAULT_EMBEDDER}, bundled), local folder or hub name"})
    int8: bool = field(default=False, metadata={"help": "int8 CPU fast path for encoding"})
    backend: str = field(default="torch", metadata={
        "help": "encoder runtime: torch, onnx (ONNX Runtime) or openvino (OpenVINO; int8 is static, calibrated); "
                "onnx and openvino run on CPU, fp32 or int8 with the int8 option",
        "choices": BACKENDS})
    bf16: bool = field(default=False, metadata={
        "help": "bfloat16 autocast for encoding (fast on CPUs with AMX/AVX512-BF16, and on GPUs)"})
    max_seq_length: int | None = field(default=None, metadata={"help": "truncate texts to this many tokens"})
    query_prefix: str | None = field(default=None, metadata={"help": "text before each query (default: the model's)"})
    doc_prefix: str | None = field(default=None, metadata={"help": "text before each document (default: the model's)"})
    batch_size: int = field(default=32, metadata={"help": "texts per encoding batch"})
    device: str | None = field(default=None, metadata={"help": "torch device (cpu, cuda...; default: the best one)"})
    show_progress: bool = field(default=True, metadata={"help": "progress bar while encoding documents"})
    calibration: str | None = field(default=None, metadata={
        "help": "backend='openvino', int8: passages to calibrate on (corpus file, BEIR folder or a cached "
                "sha256: id); default: a sample of the first documents encoded"})

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):   # a pathlib.Path is welcome; it is stored as a string
            object.__setattr__(self, "model", str(self.model))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"EncoderConfig.model must name a model (an alias, a folder or a hub name), "
                             f"got {self.model!r}")
        for name in ("int8", "bf16", "show_progress"):
            check_type("EncoderConfig", name, getattr(self, name), (bool,))
        for name in ("query_prefix", "doc_prefix", "device", "calibration"):
            check_type("EncoderConfig", name, getattr(self, name), (str,), optional=True)
        check_type("EncoderConfig", "batch_size", self.batch_size, (int,))
        check_type("EncoderConfig", "max_seq_length", self.max_seq_length, (int,), optional=True)
        self._check_values()

    def _check_values(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {self.max_seq_length}")
        if self.int8 and self.bf16:
            raise ValueError("int8=True and bf16=True are two different fast paths; pick one")
        if self.bf16 and self.backend != "torch":
            raise ValueError(f"bf16=True runs in torch; use backend='torch' (or int8=True with "
                             f"backend={self.backend!r})")
        if self.cpu_only and self.device not in (None, "cpu"):
            raise ValueError(f"int8=True and backend={self.backend!r} run on CPU only; got device={self.device!r}")
        if self.calibration is not None and not (self.int8 and self.backend == "openvino"):
            raise ValueError("calibration applies to int8=True with backend='openvino' (static int8)")

    @property
    def cpu_only(self) -> bool:
        return self.int8 or self.backend != "torch"


# The options that decide which vectors come out (all but the progress bar): keys of an encoder cache.
ENCODER_OPTIONS: tuple[str, ...] = tuple(n for n in field_names(EncoderConfig) if n != "show_progress")


def _sentence_transformers():
    try:
        import sentence_transformers
    except ImportError as exc:
        raise MissingDependency("dense retrieval needs sentence-transformers: pip install 'retrievekit[dense]'") from exc
    return sentence_transformers


def _model_prefixes(model: Any, name: str) -> tuple[str, str]:
    """(query, document) prefixes declared by the model's ``prompts``, else the registry's, else none."""
    prompts = dict(getattr(model, "prompts", None) or {})
    query = next((prompts[p] for p in QUERY_PROMPT_NAMES if prompts.get(p)), None)
    doc = next((prompts[p] for p in DOC_PROMPT_NAMES if prompts.get(p)), None)
    spec = model_spec(name)
    if query is None and doc is None and spec is not None and spec.prefixes is not None:
        return spec.prefixes
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
    ``backend="onnx"`` runs a fused ONNX Runtime export of the transformer instead of torch (``onnx.py``;
    CPU; same vectors in fp32, and one query in ~2.5 ms instead of ~8); ``backend="openvino"`` an OpenVINO
    conversion (``openvino.py``; CPU). ``int8=True`` swaps nn.Linear for dynamically quantised int8 kernels
    (torch, ``quantize.py``), quantises the ONNX graph dynamically, or the OpenVINO model statically
    (NNCF, calibrated on in-domain passages: ``calibration``, default a sample of the first block of documents
    encoded); CPU only.
    ``bf16=True`` runs the fp32 weights under bfloat16 autocast (matrix products in bf16, reductions and
    outputs in fp32): 2.6-3x fp32 on CPUs with AMX/AVX512-BF16 at ~0.99998 cosine, also on GPUs.
    """

    def __init__(self, model: Any, config: EncoderConfig, cache_dir: str | None = None, *,
                 reference: str | None = None, source: str = "memory", fingerprint: str | None = None) -> None:
        """Wrap a loaded ``SentenceTransformer``; ``reference``/``source``/``fingerprint`` say where it came from."""
        if not isinstance(config, EncoderConfig):
            raise ValueError(f"config must be an EncoderConfig, got {type(config).__name__}")
        self.model = model
        self.onnx: Any = None
        self.openvino: Any = None
        self.config = config
        self.model_name = config.model
        self.reference, self.source, self.fingerprint = reference or config.model, source, fingerprint
        if config.max_seq_length is not None:
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
        self._fast_path(cache_dir)

    def _fast_path(self, cache_dir: str | None) -> None:
        """Swap in the ONNX Runtime graph or the int8 torch model the config asks for."""
        config = self.config
        if config.backend == "onnx":
            from retrieval.dense.onnx import OnnxEncoder, OnnxSettings

            self.onnx = OnnxEncoder(self.model, OnnxSettings(quantize=config.int8), cache_dir=cache_dir)
        elif config.backend == "openvino":
            from retrieval.dense.openvino import OpenVinoEncoder, OpenVinoSettings

            self.openvino = OpenVinoEncoder(self.model, OpenVinoSettings(quantize=config.int8),
                                            cache_dir=cache_dir, calibration=config.calibration)
        elif config.int8:
            from retrieval.dense.quantize import quantize_linear_int8

            self.model = quantize_linear_int8(self.model)
        if config.bf16 and self.device_type == "cpu" and not has_fast_bf16():
            logger.warning("bf16=True on a CPU without AVX512-BF16/AMX: PyTorch emulates bf16 there, so encoding "
                           "is likely slower than fp32")

    @classmethod
    def from_model(cls, model: Any, *, model_name: str | None = None, cache_dir: str | None = None,
                   **options: Any) -> "BiEncoder":
        """Wrap an in-memory ``SentenceTransformer`` (e.g. one just trained); ``options``: EncoderConfig fields."""
        name = model_name or getattr(getattr(model, "model_card_data", None), "base_model", None) or "in-memory"
        return cls(model, EncoderConfig(model=str(name)).with_options(**options), cache_dir=cache_dir)

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
        """What a saved index must agree with: model reference and fingerprint, dimension, normalisation,
        pooling, prefixes (``source``: "bundled", "local", "hub" or "memory")."""
        return {"model": self.reference, "source": self.source, "fingerprint": self.fingerprint, "dim": self.dim,
                "normalize": self.normalize, "pooling": self.pooling, "query_prefix": self.query_prefix,
                "doc_prefix": self.doc_prefix, "max_seq_length": self.max_seq_length, "int8": self.config.int8,
                "backend": self.config.backend, "bf16": self.config.bf16, **self._calibration()}

    def _calibration(self) -> dict[str, Any]:
        """``{"calibration": id}`` for int8 OpenVINO (None until calibrated); nothing for other paths."""
        if self.openvino is None or not self.config.int8:
            return {}
        return {"calibration": self.openvino.calibration}

    def _encode(self, texts: list[str], prefix: str, show_progress: bool, documents: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.openvino is not None:   # an uncalibrated int8 model calibrates on the first documents
            return self.openvino.encode(texts, prompt=prefix or None, batch_size=self.config.batch_size,
                                        normalize=self.normalize, show_progress=show_progress, calibrate=documents)
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
        texts = typed_list(queries, str, "encode_queries", "query")
        return self._encode(texts, self.query_prefix, show_progress=False)

    def encode_documents(self, docs: Sequence[Document | str], show_progress: bool | None = None) -> np.ndarray:
        """Embed documents (title + " " + text, as BEIR does, with the document prefix): (n, dim) float32.

        Streams: texts are made and encoded ``STREAM_BLOCK`` documents at a time into one preallocated array,
        so memory beyond the vectors themselves does not grow with the collection."""
        if isinstance(docs, (str, bytes)) or not isinstance(docs, Iterable):
            raise TypeError(f"encode_documents takes a list of Documents or strings, got {type(docs).__name__}")
        progress = self.config.show_progress if show_progress is None else show_progress
        if not hasattr(docs, "__getitem__"):
            docs = list(docs)
        n = len(docs)
        if n <= STREAM_BLOCK:
            texts = [_document_text(d, i) for i, d in enumerate(docs)]
            return self._encode(texts, self.doc_prefix, show_progress=progress and n > self.config.batch_size,
                                documents=True)
        out = np.empty((n, self.dim), dtype=np.float32)
        with tqdm(total=n, desc="Encoding", unit="doc", disable=not progress) as bar:
            for start in range(0, n, STREAM_BLOCK):
                block = docs[start:start + STREAM_BLOCK]
                texts = [_document_text(d, start + i) for i, d in enumerate(block)]
                out[start:start + len(texts)] = self._encode(texts, self.doc_prefix, show_progress=False,
                                                             documents=True)
                bar.update(len(texts))
        return out


def _document_text(doc: Any, i: int) -> str:
    """What a document is encoded as: a Document's title + text, or a string as it is (a dict would be encoded as
    its repr, so anything else is refused)."""
    if isinstance(doc, Document):
        return doc.full_text
    if isinstance(doc, str):
        return doc
    raise TypeError(f"encode_documents: document {i} is a {type(doc).__name__}, not a Document or str: {doc!r:.60} "
                    "(load dicts with retrieval.iter_documents)")


STREAM_BLOCK = 8192   # documents per encoding block: long enough for length-sorted batches, small next to vectors


def load_encoder(model: str | EncoderConfig = DEFAULT_EMBEDDER, *, cache_dir: str | None = None,
                 **options: Any) -> BiEncoder:
    """Load a bi-encoder by alias (``minilm``: bundled, offline), local folder, or hub name.

    ``model`` is a name or a whole :class:`EncoderConfig`; ``options`` are its other fields (``int8``,
    ``backend``, ``bf16``, ``batch_size``...; unknown names raise ValueError). ``backend="onnx"`` runs the model
    in ONNX Runtime (CPU; export cached in ``cache_dir``, default ``~/.cache/retrievekit/onnx``; needs
    ``pip install onnxruntime onnx``), ``backend="openvino"`` in OpenVINO (``~/.cache/retrievekit/openvino``;
    ``pip install 'retrievekit[openvino]'``). ``int8=True`` picks the CPU int8 path of either backend (dynamic
    nn.Linear in torch, a quantised graph in ONNX Runtime). ``bf16=True`` encodes under bfloat16 autocast.
    """
    config = model if isinstance(model, EncoderConfig) else EncoderConfig(model=model)
    config = config.with_options(**options) if options else config
    ref = resolve_model(config.model)
    st = _sentence_transformers()
    logger.info("loading bi-encoder %s from %s", config.model, ref.path)
    device = "cpu" if config.cpu_only else config.device
    try:
        st_model = st.SentenceTransformer(ref.path, device=device, local_files_only=ref.is_local)
    except OSError as exc:
        if ref.is_local:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"model {config.model!r} is not a bundled alias ({', '.join(bundled('bi-encoder'))}) or a "
                      f"local folder, and loading it from the Hugging Face hub failed: {first}") from exc
    reference, source = model_reference(config.model)
    fingerprint = folder_fingerprint(ref.path) if ref.is_local else None
    return BiEncoder(st_model, config, cache_dir=cache_dir, reference=reference, source=source,
                     fingerprint=fingerprint)
