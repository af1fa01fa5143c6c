"""TSDAE: Transformer-based Sequential Denoising Auto-Encoder (Wang, Reimers, Gurevych, EMNLP 2021).

Encode a noisy sentence (60% of words deleted), pool it to one vector, and make a decoder rebuild the
original sentence while its cross-attention sees only that vector. Paper defaults: deletion 0.6,
[CLS] pooling, encoder and decoder weights tied, lr 3e-5, batch 8.

This is our own small module rather than ``sentence_transformers.losses.DenoisingAutoEncoderLoss``:
that class re-loads the tokenizer and decoder by name (a download for hub names), assumes NLTK noise,
and feeds the decoder the *normalised* output vector. Here the decoder is built from the encoder's own
config and weights (nothing is read from disk), and sees the pooled vector before any ``Normalize``.

Example::

    model = SentenceTransformer("path/to/encoder")
    objective = TSDAE(model)
    batch = objective.make_batch(["A sentence of the domain."], random.Random(0))
    features = [model.preprocess(col) for col in batch.columns]
    objective.loss(features).backward()
"""
from __future__ import annotations

import copy
import logging
import random

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from training.bi_encoder import BI_ENCODER, sentence_items
from training.config import TSDAEConfig
from training.noise import NoiseConfig, noisy_batch
from training.objective import Batch

logger = logging.getLogger(__name__)


def build_decoder(encoder: PreTrainedModel, tie_weights: bool = True) -> PreTrainedModel:
    """A causal LM of the encoder's architecture with cross-attention (e.g. ``BertLMHeadModel``).

    With ``tie_weights`` every decoder parameter that has an encoder twin (embeddings, self-attention,
    feed-forward) *is* the encoder's parameter; cross-attention and the LM-head transform are new.
    """
    config = copy.deepcopy(encoder.config)
    config.is_decoder = True
    config.add_cross_attention = True
    config.tie_word_embeddings = True
    try:
        decoder = AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise ValueError(f"TSDAE needs a decoder for {type(encoder).__name__} ({config.model_type}); "
                         f"transformers has no causal-LM class for it") from exc
    base = getattr(decoder, decoder.base_model_prefix)
    if tie_weights:
        _tie(encoder, base)
    else:
        base.load_state_dict(encoder.state_dict(), strict=False)
    decoder.tie_weights()  # output embeddings = (shared) input embeddings
    return decoder.to(next(encoder.parameters()).device)


def _tie(encoder: nn.Module, decoder_base: nn.Module) -> None:
    """Point each decoder parameter at the same-named encoder parameter (shared storage)."""
    modules = dict(decoder_base.named_modules())
    tied = 0
    for name, param in encoder.named_parameters():
        module_name, _, attr = name.rpartition(".")
        target = modules.get(module_name)
        if target is not None and isinstance(getattr(target, attr, None), nn.Parameter):
            setattr(target, attr, param)
            tied += 1
    if tied == 0:
        raise ValueError("TSDAE: no decoder parameter matched an encoder parameter; cannot tie weights")
    logger.debug("tied %d encoder/decoder parameters", tied)


def pooled_embedding(model: SentenceTransformer, features: dict) -> Tensor:
    """The sentence vector before any ``Normalize`` module: (batch, hidden)."""
    for module in model:
        if isinstance(module, Normalize):
            continue
        features = module(features)
    return features["sentence_embedding"]


class TSDAELoss(nn.Module):
    """Cross-entropy of the decoder rebuilding the original sentence from the noisy sentence's vector."""

    def __init__(self, model: SentenceTransformer, tie_weights: bool = True) -> None:
        super().__init__()
        self.model = model
        self.decoder = build_decoder(model.transformers_model, tie_weights)
        pad = model.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else 0)

    def forward(self, sentence_features: list[dict], labels: Tensor | None = None) -> Tensor:
        noisy, original = sentence_features
        reps = pooled_embedding(self.model, noisy)  # (batch, hidden)
        ids = original["input_ids"]  # (batch, length): [CLS] w1 ... wn [SEP] [PAD]...
        logits = self.decoder(
            input_ids=ids[:, :-1],
            attention_mask=original["attention_mask"][:, :-1],
            encoder_hidden_states=reps[:, None],  # (batch, 1, hidden): the only thing cross-attention sees
            encoder_attention_mask=torch.ones(ids.shape[0], 1, dtype=torch.long, device=ids.device),
            use_cache=False,
        ).logits  # (batch, length - 1, vocab)
        target = ids[:, 1:]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=self.pad_token_id)


class TSDAE:
    """TSDAE objective: noisy copy and original as the two input columns."""

    name = "tsdae"

    def __init__(self, model: SentenceTransformer, noise: NoiseConfig | None = None, tie_weights: bool = True) -> None:
        self.noise = noise or NoiseConfig()
        if self.noise.kind == "mask" and model.tokenizer.mask_token:
            self.noise = NoiseConfig(self.noise.kind, self.noise.ratio, self.noise.unit, model.tokenizer.mask_token)
        self.tokenizer = model.tokenizer
        self.loss = TSDAELoss(model, tie_weights)

    def make_batch(self, sentences: list[str], rng: random.Random) -> Batch:
        return Batch([noisy_batch(sentences, self.noise, rng, self.tokenizer), list(sentences)])


MODEL = BI_ENCODER


def training_items(config: TSDAEConfig) -> list[str]:
    """TSDAE trains on corpus sentences."""
    return sentence_items(config)


def build(config: TSDAEConfig, model: SentenceTransformer, items: list[str]) -> TSDAE:
    return TSDAE(model, noise=config.noise_config(), tie_weights=config.tie_weights)
