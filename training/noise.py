"""Input noise for TSDAE: delete, swap or mask words, offline and reproducible.

sentence-transformers' ``DenoisingAutoEncoderDataset`` splits words with NLTK's punkt, which needs a
download; here words come from a regex (or from the model's tokenizer), so nothing is fetched.
Every function takes a ``random.Random`` so a run's noise is fixed by its seed.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Protocol

NOISE_KINDS = ("delete", "swap", "mask")
_WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]", re.UNICODE)
_NO_SPACE_BEFORE = re.compile(r"\s+([.,;:!?%)\]}])")
_NO_SPACE_AFTER = re.compile(r"([(\[{])\s+")


class WordTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the ``unit="token"`` splitter needs."""

    def tokenize(self, text: str) -> list[str]: ...
    def convert_tokens_to_string(self, tokens: list[str]) -> str: ...


@dataclass(frozen=True)
class NoiseConfig:
    """Which noise to apply and how much: ``ratio`` is the share of words deleted/swapped/masked."""

    kind: str = "delete"
    ratio: float = 0.6
    unit: str = "word"  # "word": regex words; "token": the model tokenizer's word pieces
    mask_token: str = "[MASK]"

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"noise kind {self.kind!r}: expected one of {NOISE_KINDS}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"noise ratio {self.ratio!r}: must be a number in [0, 1]")
        if not isinstance(self.mask_token, str) or not self.mask_token:
            raise ValueError(f"noise mask_token {self.mask_token!r}: must be a non-empty string")
        if self.unit not in ("word", "token"):
            raise ValueError(f"noise unit {self.unit!r}: expected 'word' or 'token'")


def split_words(text: str) -> list[str]:
    """Words and punctuation marks of ``text`` (``"don't stop."`` -> ``["don't", "stop", "."]``)."""
    return _WORD.findall(text)


def join_words(words: list[str]) -> str:
    """Inverse of :func:`split_words` up to spacing: no space before closing punctuation."""
    text = " ".join(words)
    return _NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", text))


def delete_words(words: list[str], ratio: float, rng: random.Random) -> list[str]:
    """Drop each word with probability ``ratio``; keep one random word if all would go (as TSDAE does)."""
    if not words:
        return []
    kept = [w for w in words if rng.random() >= ratio]
    return kept or [words[rng.randrange(len(words))]]


def swap_words(words: list[str], ratio: float, rng: random.Random) -> list[str]:
    """Swap ``round(ratio * n / 2)`` random pairs of positions, so about ``ratio`` of the words move."""
    out = list(words)
    n = len(out)
    for _ in range(round(ratio * n / 2) if n > 1 else 0):
        i, j = rng.sample(range(n), 2)
        out[i], out[j] = out[j], out[i]
    return out


def mask_words(words: list[str], ratio: float, rng: random.Random, mask_token: str = "[MASK]") -> list[str]:
    """Replace each word with ``mask_token`` with probability ``ratio``."""
    return [mask_token if rng.random() < ratio else w for w in words]


def apply_noise(words: list[str], config: NoiseConfig, rng: random.Random) -> list[str]:
    """Apply the configured noise to a list of words."""
    if config.kind == "delete":
        return delete_words(words, config.ratio, rng)
    if config.kind == "swap":
        return swap_words(words, config.ratio, rng)
    return mask_words(words, config.ratio, rng, config.mask_token)


def _group_word_pieces(pieces: list[str]) -> list[list[str]]:
    """Group WordPiece tokens into words (``##`` continues the previous word)."""
    groups: list[list[str]] = []
    for piece in pieces:
        if piece.startswith("##") and groups:
            groups[-1].append(piece)
        else:
            groups.append([piece])
    return groups


def noisy_text(text: str, config: NoiseConfig, rng: random.Random, tokenizer: WordTokenizer | None = None) -> str:
    """One noisy copy of ``text``; ``unit="token"`` splits with ``tokenizer`` (whole words kept together)."""
    if config.unit == "word":
        return join_words(apply_noise(split_words(text), config, rng))
    if tokenizer is None:
        raise ValueError("noise unit 'token' needs the model's tokenizer")
    groups = _group_word_pieces(tokenizer.tokenize(text))
    noisy = apply_noise(groups, config, rng)  # type: ignore[arg-type]  # masking puts a str in place of a group
    pieces = [p for g in noisy for p in (g if isinstance(g, list) else [g])]
    return tokenizer.convert_tokens_to_string(pieces)


def noisy_batch(texts: list[str], config: NoiseConfig, rng: random.Random,
                tokenizer: WordTokenizer | None = None) -> list[str]:
    """Noisy copies of a batch of texts, drawn in order from ``rng``."""
    return [noisy_text(t, config, rng, tokenizer) for t in texts]
