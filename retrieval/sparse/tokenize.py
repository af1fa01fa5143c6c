"""Text to tokens for BM25: regex split, lowercase, stopwords, Snowball stemming (PyStemmer).

The defaults equal bm25s's recommended set-up (``(?u)\\b\\w\\w+\\b`` tokens, English stopwords,
English Snowball stemmer), which scores nDCG@10 0.686 on BEIR SciFact.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

from retrieval.errors import MissingDependency


@dataclass(frozen=True)
class TokenizerConfig:
    """How text becomes BM25 terms. Serialized into every saved index."""

    lowercase: bool = True
    token_pattern: str = r"(?u)\b\w\w+\b"
    stopwords: str | None = "en"  # "en" or None
    stemmer: str | None = "english"  # any PyStemmer algorithm name, or None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TokenizerConfig":
        return cls(**{k: data[k] for k in ("lowercase", "token_pattern", "stopwords", "stemmer") if k in data})

    @classmethod
    def preset(cls, name: str) -> "TokenizerConfig":
        """Named set-ups: ``"default"`` (bm25s-like) and ``"plain"`` (lowercase ``\\w+``, as rank-bm25 users split)."""
        presets = {
            "default": cls(),
            "plain": cls(token_pattern=r"\w+", stopwords=None, stemmer=None),
            "nostem": cls(stemmer=None),
        }
        if name not in presets:
            raise ValueError(f"unknown tokenizer preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]


def english_stopwords() -> frozenset[str]:
    """bm25s's English stopword list (the list behind its published SciFact score)."""
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


class Tokenizer:
    """Callable turning text into a list of terms; stems are cached per distinct word."""

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        self.config = config or TokenizerConfig()
        if self.config.stopwords not in (None, "en"):
            raise ValueError(f"stopwords must be 'en' or None, got {self.config.stopwords!r}")
        self._split = re.compile(self.config.token_pattern).findall
        self._stop = english_stopwords() if self.config.stopwords == "en" else frozenset()
        self._stem_cache: dict[str, str] = {}

    @cached_property
    def _stemmer(self) -> Any:
        try:
            import Stemmer
        except ImportError as exc:
            raise MissingDependency("stemming needs PyStemmer: pip install PyStemmer") from exc
        try:
            return Stemmer.Stemmer(self.config.stemmer)
        except KeyError:
            raise ValueError(f"unknown stemmer {self.config.stemmer!r}; see Stemmer.algorithms()") from None

    def __call__(self, text: str) -> list[str]:
        if self.config.lowercase:
            text = text.lower()
        words = [w for w in self._split(text) if w not in self._stop]
        if self.config.stemmer is None:
            return words
        cache = self._stem_cache
        new = [w for w in set(words) if w not in cache]
        if new:
            cache.update(zip(new, self._stemmer.stemWords(new)))
        return [cache[w] for w in words]
