"""A tiny randomly initialised sentence-transformers bi-encoder (2-layer BERT, hidden 32), written in seconds offline."""
from __future__ import annotations

import inspect
import string
from pathlib import Path

import sentence_transformers as st
import torch

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
except ImportError:  # older releases
    from sentence_transformers.models import Normalize, Pooling, Transformer

WORDS = ("the cat dog sat on mat protein cell gene cancer mouse human study results show "
         "increased decreased risk therapy patients trial effect").split()


def make_tiny_model(folder: Path, normalize: bool = True, prompts: dict[str, str] | None = None,
                    pooling: str = "mean", seed: int = 0) -> Path:
    """Write a randomly initialised 2-layer BERT sentence-transformers model (hidden 32) to ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *string.digits,
             *[f"##{c}" for c in string.ascii_lowercase + string.digits], *WORDS, ":", ".", ",", "-"]
    bert_dir = folder / "bert"
    bert_dir.mkdir(exist_ok=True)
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(bert_dir)
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:   # transformers >= 5
        tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    else:
        tokenizer = BertTokenizerFast(vocab_file=str(bert_dir / "vocab.txt"), do_lower_case=True)
    assert tokenizer.convert_tokens_to_ids("cat") == vocab.index("cat")
    tokenizer.save_pretrained(bert_dir)
    modules = [Transformer(str(bert_dir), max_seq_length=64),
               Pooling(32, pooling_mode=pooling)]
    if normalize:
        modules.append(Normalize())
    model = st.SentenceTransformer(modules=modules, device="cpu", prompts=prompts,
                                   similarity_fn_name="cosine" if normalize else "dot")
    out = folder / "st"
    model.save(str(out))
    return out
