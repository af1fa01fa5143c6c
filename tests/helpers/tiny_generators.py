"""Tiny randomly initialised query generators saved as model folders: a T5 (seq2seq) and a Llama chat LM."""
from __future__ import annotations

from pathlib import Path

from helpers.tiny_rerank_models import WORDS, tiny_causal_lm


def write_tiny_seq2seq(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide T5ForConditionalGeneration over a word-level vocabulary (doc2query-shaped), saved."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "</s>"] + list(dict.fromkeys(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
                      pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    folder.mkdir(parents=True, exist_ok=True)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_chat_lm(folder: Path, seed: int = 0) -> Path:
    """The tiny Llama of :func:`tiny_causal_lm` (with its chat template) saved as a folder ``llm:FOLDER`` loads."""
    model, tokenizer = tiny_causal_lm(chat_template=True, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
