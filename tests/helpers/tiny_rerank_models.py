"""Tiny randomly initialised models for reranker tests: a BERT cross-encoder and a Llama causal LM (seconds, offline)."""
from __future__ import annotations

from pathlib import Path

WORDS = ("the a of in is to and what does cause causes mice cancer cells protein gene heart disease "
         "tower paris built iron plants light energy water river city music song query passage answer "
         "yes no rate relevance from 0 1 2 3 4 5 system user assistant judge search rank [ ] > , . ? :").split()

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} \n{% endfor %}"
                 "{% if add_generation_prompt %}assistant :{% endif %}")


def write_tiny_bert_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BertForSequenceClassification (1 label) with a WordPiece vocab, saved as a HF folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(WORDS))
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_causal_lm(chat_template: bool = True, seed: int = 0, adds_bos: bool = False):
    """``(model, tokenizer)``: a 2-layer Llama over a word-level vocabulary, optionally with a chat template;
    ``adds_bos``: the tokenizer puts ``<s>`` first by default, as Gemma's and Llama's do."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "</s>"] + list(dict.fromkeys(WORDS + ["Yes", "No"])) + (["<s>"] if adds_bos else [])
    vocab = {w: i for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                        eos_token="</s>", **({"bos_token": "<s>"} if adds_bos else {}))
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=0, eos_token_id=2, bos_token_id=vocab["<s>"] if adds_bos else 2)
    return LlamaForCausalLM(config).eval(), tokenizer
