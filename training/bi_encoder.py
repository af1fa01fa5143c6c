"""The bi-encoder side of training: load a base embedder, save it, evaluate it before and after on BEIR.

Shared by every objective that trains a sentence-transformers embedder on a corpus (TSDAE, SimCSE, CT,
pairs); each of those modules sets ``MODEL = BI_ENCODER``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer

from retrieval.models import resolve_model

from training.config import CorpusConfig, EmbedderConfig
from training.sentences import SentenceOptions, corpus_sentences


def load_base(base: str, pooling: str = "auto", device: str = "cpu", plain_pooling: str = "mean") -> SentenceTransformer:
    """A sentence-transformers model from an alias, a local folder or a hub name.

    ``pooling="auto"`` keeps a sentence-transformers folder as it is and gives a plain transformers encoder
    ``plain_pooling`` (TSDAE's config asks for [CLS], as in the paper); any other value forces that pooling.
    """
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    path = resolve_model(base).path
    if (Path(path) / "modules.json").exists() and pooling == "auto":
        return SentenceTransformer(path, device=device)
    encoder = Transformer(path)
    mode = plain_pooling if pooling == "auto" else pooling
    return SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension(), mode)], device=device)


def sentence_items(config: CorpusConfig) -> list[str]:
    """The corpus sentences a sentence-level objective trains on (TSDAE, SimCSE, CT)."""
    options = SentenceOptions(config.min_words, config.max_words, max_sentences=config.max_sentences)
    return corpus_sentences(config.corpus, options)


class BiEncoderKind:
    """Load/save/evaluate for sentence-transformers embedders (see :class:`training.objective.ModelKind`)."""

    def load(self, config: EmbedderConfig, device: str) -> SentenceTransformer:
        return load_base(config.base, config.pooling, device, config.PLAIN_POOLING)

    def save(self, model: SentenceTransformer, config: EmbedderConfig, folder: Path) -> None:
        model.save(str(folder))

    def evaluate(self, model: SentenceTransformer, config: EmbedderConfig, run_path: Path,
                 cache: str | None) -> dict[str, Any]:
        """nDCG@10 etc. of exact dense search on ``config.eval_beir`` (the shared evaluation path).

        ``cache`` is a corpus-embedding cache folder; its entries are keyed by the model's weights and settings.
        """
        from training.evaluate import evaluate_on_beir

        return evaluate_on_beir(model, config.eval_beir, config.eval_split, max_seq_length=config.eval_max_seq_length,
                                batch_size=config.eval_batch_size, cache=cache, show_progress=config.show_progress,
                                run_path=run_path)


BI_ENCODER = BiEncoderKind()
