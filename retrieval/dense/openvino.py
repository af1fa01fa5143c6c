"""The OpenVINO CPU path: a sentence-transformers model's transformer converted once, optionally int8 by NNCF.

``openvino.convert_model`` traces the transformer (the same wrapper as the ONNX export) into an OpenVINO model
with dynamic batch and length. For int8 it is statically quantised by NNCF (``model_type=TRANSFORMER``: int8
weights per channel, int8 activations with ranges calibrated on in-domain text, smooth-quant and bias
correction). The calibration texts are the passages of a corpus (``calibration=`` a BEIR folder or corpus
file), texts cached earlier (``sha256:<id>``), or by default a sample of the first documents encoded.
Converted models are cached under ``~/.cache/retrievekit/openvino/<hash of weights + settings + calibration>/``
(atomic folders; calibration texts as JSON under ``calibration/``). Pooling and normalisation run in numpy as
the model's own modules say; bulk encoding runs batches on parallel single-thread streams.
Needs ``pip install 'retrievekit[openvino]'`` (openvino, and nncf for int8).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.dense.onnx import INPUT_NAMES, _hidden_state_module, _st_parts
from retrieval.errors import DataError, MissingDependency
from retrieval.persistence import atomic_dir, atomic_write_text

logger = logging.getLogger(__name__)

OPENVINO_FORMAT_VERSION = 1   # bump when the conversion recipe changes, so old cache folders are not reused
INT8_FILE, FP32_FILE = "model.int8.xml", "model.fp32.xml"
CALIBRATION_PREFIX = "sha256:"
PRESETS = ("mixed", "performance")


@dataclass(frozen=True)
class OpenVinoSettings:
    """How the OpenVINO model is made; part of the cache key."""

    quantize: bool = True        # static int8 (NNCF, calibrated); False keeps the fp32 conversion
    preset: str = "mixed"        # NNCF preset: mixed (asymmetric activations) or performance (symmetric)
    subset_size: int = 300       # calibration passages at most
    calibration_batch: int = 8   # passages per calibration forward pass

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"OpenVinoSettings.preset must be one of {PRESETS}, got {self.preset!r}")
        if self.subset_size < 1 or self.calibration_batch < 1:
            raise ValueError("OpenVinoSettings.subset_size and calibration_batch must be >= 1")


def openvino_module() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise MissingDependency("backend='openvino' needs OpenVINO: pip install 'retrievekit[openvino]'") from exc
    return openvino


def nncf_module() -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise MissingDependency("backend='openvino' with int8=True needs NNCF: pip install "
                                "'retrievekit[openvino]'") from exc
    return nncf


def default_cache_dir() -> Path:
    """``$RETRIEVEKIT_CACHE/openvino`` if set, else ``~/.cache/retrievekit/openvino``."""
    root = os.environ.get("RETRIEVEKIT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "retrievekit") / "openvino"


# --- calibration texts ---------------------------------------------------------------------------
def sample_texts(texts: Sequence[str], n: int) -> list[str]:
    """Up to ``n`` non-empty texts spread evenly over ``texts`` (deterministic, order kept)."""
    kept = [t for t in texts if t.strip()]
    if len(kept) <= n:
        return kept
    return [kept[i] for i in np.linspace(0, len(kept) - 1, n).round().astype(int)]


def calibration_id(texts: Sequence[str]) -> str:
    """``sha256:<24 hex>`` over the texts: how a calibration set is named in configs and manifests."""
    return CALIBRATION_PREFIX + hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:24]


def save_calibration(texts: Sequence[str], cache_dir: Path) -> str:
    """Keep ``texts`` as ``calibration/<id>.json`` (atomic) so a reloaded index can name them; returns the id."""
    ident = calibration_id(texts)
    path = cache_dir / "calibration" / f"{ident[len(CALIBRATION_PREFIX):]}.json"
    if not path.exists():
        atomic_write_text(path, json.dumps(list(texts), ensure_ascii=False))
    return ident


def _cached_calibration(ident: str, cache_dir: Path) -> list[str]:
    path = cache_dir / "calibration" / f"{ident[len(CALIBRATION_PREFIX):]}.json"
    if not path.is_file():
        raise DataError(f"calibration {ident!r}: no cached texts at {path}; pass calibration=<corpus path> "
                        "(the passages the int8 model was calibrated on)")
    texts = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or calibration_id(texts) != ident:
        raise DataError(f"{path}: not the calibration texts {ident!r} (damaged or edited)")
    return texts


def calibration_texts(source: str, cache_dir: Path, n: int) -> list[str]:
    """The texts ``source`` names: a cached id (``sha256:...``) or a corpus (BEIR folder, JSONL/CSV/TSV file)."""
    if source.startswith(CALIBRATION_PREFIX):
        return _cached_calibration(source, cache_dir)
    from retrieval.data import iter_documents

    path = Path(source)
    if not path.exists():
        raise DataError(f"calibration: {path} does not exist (a corpus file or BEIR folder, or a sha256: id)")
    texts = sample_texts([d.full_text for d in iter_documents(path)], n)
    if not texts:
        raise DataError(f"calibration: {path} holds no non-empty passage")
    return texts


# --- conversion, quantisation, cache ----------------------------------------------------------------
def cache_key(hf_model: Any, settings: OpenVinoSettings, calibration: str | None) -> str:
    """SHA-256 (first 24 hex) over the model's config and weights, the settings, versions and calibration id."""
    import torch

    openvino = openvino_module()
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": OPENVINO_FORMAT_VERSION, "settings": asdict(settings),
                              "openvino": openvino.__version__, "torch": torch.__version__,
                              "nncf": _nncf_version() if settings.quantize else None, "calibration": calibration,
                              "config": hf_model.config.to_json_string(use_diff=False)}, sort_keys=True).encode())
    for name, tensor in hf_model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _nncf_version() -> str:
    return str(nncf_module().__version__)


def convert(hf_model: Any) -> Any:
    """The transformer as an ``openvino.Model`` (inputs ``INPUT_NAMES``, output ``last_hidden_state``)."""
    import torch

    openvino = openvino_module()
    model = copy.deepcopy(hf_model).to("cpu").eval()
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]], dtype=torch.long)
    example = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # tracer warnings about Python control flow on shapes
        converted = openvino.convert_model(_hidden_state_module(model), example_input=example)
    for port, name in zip(converted.inputs, INPUT_NAMES):
        port.get_tensor().set_names({name})
    converted.outputs[0].get_tensor().set_names({"last_hidden_state"})
    return converted


def quantize(model: Any, feeds: list[dict[str, np.ndarray]], settings: OpenVinoSettings) -> Any:
    """Static int8 of ``model`` by NNCF, activation ranges calibrated on ``feeds`` (tokenised passages)."""
    nncf = nncf_module()
    preset = nncf.QuantizationPreset.MIXED if settings.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nncf.quantize(model, nncf.Dataset(feeds), preset=preset, model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(feeds))


def cached_openvino_model(hf_model: Any, settings: OpenVinoSettings, cache_dir: Path,
                          calibration: tuple[str, list[dict[str, np.ndarray]]] | None = None) -> Path:
    """The ``.xml`` of ``hf_model`` converted (and, with ``calibration`` = (id, feeds), quantised) once."""
    openvino = openvino_module()
    if settings.quantize and calibration is None:
        raise ValueError("an int8 OpenVINO model needs calibration texts")
    ident = calibration[0] if settings.quantize and calibration else None
    target = cache_dir / cache_key(hf_model, settings, ident)
    path = target / (INT8_FILE if settings.quantize else FP32_FILE)
    if path.exists() and (target / "settings.json").exists():
        logger.info("openvino: reusing %s", path)
        return path
    logger.info("openvino: converting %s to %s (once)", type(hf_model).__name__, target)
    model = convert(hf_model)
    if settings.quantize and calibration is not None:
        model = quantize(model, calibration[1], settings)
    with atomic_dir(target) as tmp:
        openvino.save_model(model, str(tmp / path.name), compress_to_fp16=False)
        (tmp / "settings.json").write_text(json.dumps({"format": OPENVINO_FORMAT_VERSION, "calibration": ident,
                                                       **asdict(settings)}, indent=2), encoding="utf-8")
    return path


# --- encoding ---------------------------------------------------------------------------------------
def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from token states as sentence-transformers' Pooling does (mean, cls or max)."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask[..., None].astype(np.float32)
    if mode == "max":
        return np.where(m > 0, hidden, -1e9).max(axis=1)
    return (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)


def _feed(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    ids = batch["input_ids"].astype(np.int64)
    types = batch.get("token_type_ids")
    return {"input_ids": ids, "attention_mask": batch["attention_mask"].astype(np.int64),
            "token_type_ids": np.zeros_like(ids) if types is None else types.astype(np.int64)}


class OpenVinoEncoder:
    """Runs a sentence-transformers model's transformer in OpenVINO (fp32, or int8 once calibrated)."""

    def __init__(self, st_model: Any, settings: OpenVinoSettings = OpenVinoSettings(), *,
                 cache_dir: str | Path | None = None, calibration: str | None = None,
                 threads: int | None = None) -> None:
        """``calibration``: a corpus path or cached id; None (int8) calibrates on the first documents encoded."""
        self.openvino = openvino_module()
        if settings.quantize:
            nncf_module()
        transformer, self.pooling = _st_parts(st_model, "openvino")
        self.st_model, self.settings = st_model, settings
        self.tokenizer, self.hf_model = transformer.tokenizer, transformer.auto_model
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.threads = threads or os.cpu_count() or 1
        self.calibration: str | None = None
        self.path: Path | None = None
        self._latency: Any = None
        self._throughput: Any = None
        if not settings.quantize:
            self._load(None)
        elif calibration is not None:
            self.calibrate(calibration_texts(calibration, self.cache_dir, settings.subset_size))

    @property
    def max_seq_length(self) -> int:
        return int(self.st_model.max_seq_length)

    @property
    def ready(self) -> bool:
        """False while an int8 encoder still waits for its calibration texts."""
        return self._latency is not None

    def calibrate(self, texts: Sequence[str]) -> str:
        """Quantise (or reuse the cached int8 model) with activation ranges from ``texts``; returns their id."""
        if not self.settings.quantize:
            raise ValueError("calibrate() applies to the int8 OpenVINO model (int8=True)")
        sample = sample_texts(list(texts), self.settings.subset_size)
        if not sample:
            raise ValueError("int8 OpenVINO calibration needs at least one non-empty text")
        ident = save_calibration(sample, self.cache_dir)
        step = self.settings.calibration_batch
        feeds = [_feed(self.tokenizer, sample[i:i + step], self.max_seq_length) for i in range(0, len(sample), step)]
        self._load((ident, feeds))
        self.calibration = ident
        logger.info("openvino: int8 calibrated on %d passages (%s)", len(sample), ident)
        return ident

    def _load(self, calibration: tuple[str, list[dict[str, np.ndarray]]] | None) -> None:
        self.path = cached_openvino_model(self.hf_model, self.settings, self.cache_dir, calibration)
        core = self.openvino.Core()
        model = core.read_model(str(self.path))
        common = {"INFERENCE_PRECISION_HINT": "f32"}   # never bf16/f16 behind our back (AMX CPUs default to bf16)
        self._latency = core.compile_model(model, "CPU", {**common, "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": self.threads})
        self._throughput = None
        if self.threads > 1:   # bulk: one single-thread stream per core, batches in parallel
            self._throughput = core.compile_model(model, "CPU", {
                **common, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.threads,
                "INFERENCE_NUM_THREADS": self.threads})

    def _batches(self, texts: list[str], batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        order = np.argsort([-len(t) for t in texts], kind="stable")   # longest first: one padded length per batch
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            yield rows, _feed(self.tokenizer, [texts[i] for i in rows], self.max_seq_length)

    def encode(self, texts: Sequence[str], *, prompt: str | None = None, batch_size: int = 32,
               normalize: bool = True, show_progress: bool = False, calibrate: bool = False) -> np.ndarray:
        """Embed texts (truncated at ``max_seq_length``): (n, dim) float32. ``calibrate``: an int8 encoder not
        yet calibrated calibrates on these texts (documents); otherwise it refuses."""
        texts = [((prompt or "") + t).strip() for t in texts]   # sentence-transformers strips too
        if not self.ready:
            if not calibrate:
                raise ValueError("int8 OpenVINO encoder is not calibrated yet: encode documents first, or pass "
                                 "calibration=<corpus path or sha256: id>")
            self.calibrate(texts)
        dim = int(self.hf_model.config.hidden_size)
        out = np.zeros((len(texts), dim), dtype=np.float32)
        work = list(self._batches(texts, batch_size))
        if self._throughput is not None and len(work) > 1:
            self._run_parallel(work, out, show_progress)
        else:
            for rows, feed in work:
                out[rows] = pool(self._latency(feed)[0], feed["attention_mask"], self.pooling)
        if normalize and len(out):
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out

    def _run_parallel(self, work: list[tuple[np.ndarray, dict[str, np.ndarray]]], out: np.ndarray,
                      show_progress: bool) -> None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(work), desc=f"openvino {'int8' if self.settings.quantize else 'fp32'}",
                   disable=not show_progress)
        queue = self.openvino.AsyncInferQueue(self._throughput)

        def done(request: Any, item: tuple[np.ndarray, np.ndarray]) -> None:
            rows, mask = item
            out[rows] = pool(request.get_output_tensor(0).data, mask, self.pooling)
            bar.update(1)

        queue.set_callback(done)
        for rows, feed in work:
            queue.start_async(feed, (rows, feed["attention_mask"]))
        queue.wait_all()
        bar.close()
