"""Noise, sentence splitting, pair sampling and config: pure functions with exact expectations."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from training.config import CTConfig, PairsConfig, SimCSEConfig, TSDAEConfig
from training.registry import OBJECTIVES, load_config, make_config, save_config
from training.contrastive_tension import ct_pairs
from training.noise import (NoiseConfig, delete_words, join_words, mask_words, noisy_text, split_words,
                            swap_words)
from training.sentences import SentenceOptions, corpus_sentences, split_sentences, windows


def test_split_and_join_words_round_trip():
    words = split_words("TSDAE (2021) doesn't need NLTK, really.")
    assert words == ["TSDAE", "(", "2021", ")", "doesn't", "need", "NLTK", ",", "really", "."]
    assert join_words(words) == "TSDAE (2021) doesn't need NLTK, really."


def test_delete_keeps_each_word_with_probability_one_minus_ratio():
    words = [f"w{i}" for i in range(20000)]
    kept = delete_words(words, 0.6, random.Random(0))
    assert 0.38 < len(kept) / len(words) < 0.42
    kept_set = set(kept)
    assert kept == [w for w in words if w in kept_set]  # order preserved


def test_delete_edge_ratios():
    words = ["a", "b", "c"]
    assert delete_words(words, 0.0, random.Random(1)) == words
    only = delete_words(words, 1.0, random.Random(1))
    assert len(only) == 1 and only[0] in words  # TSDAE keeps one word rather than an empty input
    assert delete_words([], 0.6, random.Random(1)) == []


def test_noise_is_reproducible_from_the_seed():
    text = "The quick brown fox jumps over the lazy dog near the river bank today."
    a = [noisy_text(text, NoiseConfig(), random.Random(7)) for _ in range(3)]
    b = [noisy_text(text, NoiseConfig(), random.Random(7)) for _ in range(3)]
    assert a == b
    assert noisy_text(text, NoiseConfig(), random.Random(8)) != a[0]


def test_swap_permutes_and_mask_replaces():
    words = list("abcdefghij")
    swapped = swap_words(words, 0.6, random.Random(3))
    assert sorted(swapped) == words and swapped != words
    assert swap_words(words, 0.0, random.Random(3)) == words
    masked = mask_words(words, 1.0, random.Random(3), "[MASK]")
    assert masked == ["[MASK]"] * 10
    assert Counter(mask_words(words * 1000, 0.3, random.Random(3)))["[MASK]"] == pytest.approx(3000, abs=200)


class WordPieces:
    """A fake tokenizer: splits words longer than 4 characters into ``abcd ##ef`` pieces."""

    def tokenize(self, text: str) -> list[str]:
        out = []
        for w in text.split():
            out += [w[:4]] + (["##" + w[4:]] if len(w) > 4 else [])
        return out

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return " ".join(tokens).replace(" ##", "")


def test_token_unit_never_splits_a_word():
    text = "denoising autoencoders reconstruct sentences from corrupted inputs"
    for seed in range(20):
        out = noisy_text(text, NoiseConfig(unit="token", ratio=0.5), random.Random(seed), WordPieces())
        assert set(out.split()) <= set(text.split())
    with pytest.raises(ValueError, match="tokenizer"):
        noisy_text(text, NoiseConfig(unit="token"), random.Random(0))


@pytest.mark.parametrize("kwargs, message", [({"kind": "drop"}, "noise kind"), ({"ratio": 1.5}, "ratio"),
                                              ({"unit": "char"}, "unit")])
def test_noise_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseConfig(**kwargs)


def test_split_sentences_and_windows():
    # A split needs an upper-case letter, digit or bracket next: "e.g. not" and "G2. p53" stay together.
    text = "Cells divide. Mitosis (M phase) follows G2.  p53 is a tumour suppressor! Is it? e.g. not here."
    assert split_sentences(text) == ["Cells divide.", "Mitosis (M phase) follows G2. p53 is a tumour suppressor!",
                                     "Is it? e.g. not here."]
    assert windows("a b c d e", 2) == ["a b", "c d", "e"]


def test_corpus_sentences_dedupes_filters_and_keeps_order():
    docs = [{"_id": "1", "title": "A short title here", "text": "One two three four five. Too short. "
             "One  two three four FIVE."},
            {"_id": "2", "title": "", "text": "Six seven eight nine ten eleven."}]
    assert corpus_sentences(docs, SentenceOptions(min_words=4)) == [
        "A short title here", "One two three four five.", "Six seven eight nine ten eleven."]
    assert corpus_sentences(docs, SentenceOptions(min_words=4, include_titles=False, max_sentences=1)) == [
        "One two three four five."]
    with pytest.raises(ValueError, match="no sentence"):
        corpus_sentences(docs, SentenceOptions(min_words=50, max_words=60))


def test_ct_pairs_follow_the_positive_negative_ratio():
    sentences = [f"s{i}" for i in range(16)]
    first, second, labels = ct_pairs(sentences, sentences, 8, random.Random(0))
    assert first == sentences
    assert labels == [1.0 if i % 8 == 0 else 0.0 for i in range(16)]
    assert all((a == b) == bool(y) for a, b, y in zip(first, second, labels))


def test_config_json_round_trip_and_errors(tmp_path):
    config = CTConfig(corpus="c.jsonl", out="o", variant="original", max_steps=10)
    assert load_config(save_config(config, tmp_path / "config.json")) == config
    assert (config.lr, config.batch_size) == (1e-5, 16)  # the CT paper's, for its original variant
    assert (CTConfig(corpus="c", out="o").lr, TSDAEConfig(corpus="c", out="o").lr) == (5e-5, 3e-5)
    assert PairsConfig(corpus="c", out="o", lr=1).lr == 1.0 and isinstance(PairsConfig(corpus="c", out="o", lr=1).lr, float)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "bad.json").write_text(json.dumps({**data, "config": {**data["config"], "learning_rate": 1}}))
    with pytest.raises(ValueError, match=r"bad.json: CTConfig: unknown key\(s\) \['learning_rate'\]; valid keys: out"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown objective 'mlm'"):
        make_config("mlm", corpus="c", out="o")
    assert CTConfig.from_dict({"corpus": "c", "out": "o", "ct_variant": "original"}).variant == "original"  # old name


@pytest.mark.parametrize("cls, values, message", [
    (TSDAEConfig, {"noise": "drop"}, "TSDAEConfig.noise must be one of"),
    (TSDAEConfig, {"noise_ratio": 1.5}, "noise_ratio must be <= 1"),
    (SimCSEConfig, {"temperature": 0}, "temperature must be > 0"),
    (SimCSEConfig, {"lr": -1.0}, "lr must be > 0"),
    (SimCSEConfig, {"warmup_ratio": 1.0}, "warmup_ratio must be < 1"),
    (PairsConfig, {"pair_source": "bogus"}, "pair_source must be one of"),
    (PairsConfig, {"min_words": 10, "max_words": 5}, r"max_words \(5\) < min_words \(10\)"),
    (CTConfig, {"epochs": True}, "epochs must be int, got True"),
    (CTConfig, {"out": " "}, "out must name a folder"),
])
def test_configs_validate_their_fields(cls, values, message):
    with pytest.raises(ValueError, match=message):
        cls(**{"corpus": "c", "out": "o", **values})


def test_configs_are_frozen_and_objectives_share_one_name_per_concept():
    import dataclasses

    config = TSDAEConfig(corpus="c", out="o")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    for entry in OBJECTIVES.values():
        names = {f.name for f in dataclasses.fields(entry.config)}
        assert {"out", "base", "lr", "batch_size", "seed", "resume"} <= names
        assert not names & {"output", "base_model", "learning_rate", "ct_variant"}


@pytest.mark.parametrize("options, words", [
    ({"ratio": "0.6"}, "noise ratio '0.6': must be a number in \\[0, 1\\]"),
    ({"ratio": True}, "noise ratio True"),
    ({"ratio": float("nan")}, "noise ratio nan"),
    ({"mask_token": ""}, "mask_token '': must be a non-empty string"),
])
def test_noise_config_names_a_bad_value(options, words) -> None:
    """A string ratio raised TypeError from a comparison; True was taken as a ratio of 1."""
    with pytest.raises(ValueError, match=words):
        NoiseConfig(**options)
