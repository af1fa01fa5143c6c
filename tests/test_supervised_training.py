"""Supervised bi-encoder fine-tuning on a tiny BEIR folder with a tiny random BERT: mining, loss, resume, CLI."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("sentence_transformers")

from retrieval.types import Document  # noqa: E402
from training import SupervisedConfig, run  # noqa: E402
from training.checkpoints import checkpoint_dirs  # noqa: E402
from training.negatives import mine_hard_negatives  # noqa: E402

from helpers.tiny_encoder import make_tiny_model  # noqa: E402
from test_cross_encoder_training import DOCS, QRELS, QUERIES, write_beir  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("sup") / "m")


@pytest.mark.parametrize("first_stage", ["bm25", "dense", "both"])
def test_mined_negatives_are_never_judged_positives(tiny, first_stage) -> None:
    corpus = [Document(i, t) for i, t in DOCS.items()]
    groups = mine_hard_negatives(corpus, QUERIES, QRELS, num_negatives=3, depth=6, seed=0, show_progress=False,
                                 first_stage=first_stage, model=str(tiny))
    by_text = {t: i for i, t in DOCS.items()}
    assert len(groups) == sum(len(r) for r in QRELS.values())
    for g in groups:
        qid = next(q for q, t in QUERIES.items() if t == g.query)
        assert len(set(g.negatives)) == 3
        assert all(QRELS[qid].get(by_text[n], 0) <= 0 for n in g.negatives)
    with pytest.raises(ValueError, match="first_stage"):
        mine_hard_negatives(corpus, QUERIES, QRELS, 1, 5, 0, False, first_stage="splade")


def _config(tmp_path: Path, tiny: Path, **overrides) -> SupervisedConfig:
    beir = tmp_path / "beir"
    if not beir.exists():
        write_beir(beir, ("train", "test"))
    values = dict(data=str(beir), out=str(tmp_path / "sup"), base=str(tiny), max_seq_length=32, batch_size=3,
                  num_negatives=1, negatives_depth=5, show_progress=False, device="cpu")
    return SupervisedConfig(**{**values, **overrides})


def test_training_lowers_the_loss_and_improves_its_own_split(tmp_path, tiny) -> None:
    config = _config(tmp_path, tiny, epochs=40, lr=5e-3, warmup_ratio=0.0, eval_beir=str(tmp_path / "beir"),
                     eval_split="test")
    folder = run(config)
    metrics = json.loads((tmp_path / "sup" / "metrics.json").read_text())
    assert metrics["objective"] == "supervised" and metrics["items"] == 6
    losses = metrics["losses"]
    assert metrics["steps"] == len(losses) == 40 * 2     # 6 groups, 3 a step
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    # the test split's judgments equal the train split's here, so learning them shows on evaluation
    assert metrics["after"]["nDCG@10"] > metrics["before"]["nDCG@10"]
    from retrieval import Retriever

    r = Retriever.from_documents([Document(i, t) for i, t in DOCS.items()], method="dense", model=str(folder),
                                 show_progress=False)
    assert r.retrieve(QUERIES["q3"], k=1)[0].id == "d4"


def test_evaluating_on_the_training_split_is_refused(tmp_path, tiny) -> None:
    with pytest.raises(ValueError, match="training split"):
        _config(tmp_path, tiny, eval_beir=str(tmp_path / "beir"), eval_split="train")


def test_resume_from_a_checkpoint_ends_like_an_uninterrupted_run(tmp_path, tiny) -> None:
    import torch
    from safetensors.torch import load_file

    config = _config(tmp_path, tiny, max_steps=6, checkpoint_every=2, keep_checkpoints=3, num_negatives=2)
    straight = load_file(str(run(config) / "model.safetensors"))
    losses = json.loads((tmp_path / "sup" / "metrics.json").read_text())["losses"]
    shutil.rmtree(checkpoint_dirs(tmp_path / "sup")[-1])
    resumed = load_file(str(run(dataclasses.replace(config, resume=True)) / "model.safetensors"))
    metrics = json.loads((tmp_path / "sup" / "metrics.json").read_text())
    assert metrics["resumed_from"] == 2 and metrics["losses"] == losses   # checkpoints 2 and 4; 4 was lost
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_the_command_trains_supervised(tmp_path, tiny, capsys) -> None:
    from training.cli import main

    config = _config(tmp_path, tiny)
    argv = ["supervised", "--data", config.data, "--out", config.out, "--base", config.base, "--max-steps", "2",
            "--max-seq-length", "32", "--batch-size", "3", "--negatives-from", "both", "--device", "cpu",
            "--no-progress"]
    assert main(argv) == 0
    assert f"model: {tmp_path / 'sup' / 'model'}" in capsys.readouterr().out
    saved = json.loads((tmp_path / "sup" / "config.json").read_text())["config"]
    assert saved["negatives_from"] == "both" and saved["split"] == "train"


def test_a_chain_starts_each_step_from_the_last_model_and_resumes(tmp_path, tiny, capsys) -> None:
    """The TSDAE paper's protocol as a chain: an unsupervised step on the corpus, then supervised."""
    from training.chain import chain_configs, load_chain, run_chain
    from training.cli import main

    beir = _config(tmp_path, tiny).data    # writes the tiny BEIR folder
    spec = {"out": str(tmp_path / "chain"), "base": str(tiny),
            "steps": [{"objective": "simcse", "corpus": beir, "max_steps": 2, "batch_size": 4, "min_words": 2,
                       "max_seq_length": 16, "device": "cpu", "show_progress": False},
                      {"objective": "supervised", "data": beir, "max_steps": 2, "batch_size": 3,
                       "max_seq_length": 32, "negatives_depth": 5, "eval_beir": beir, "eval_split": "test",
                       "device": "cpu", "show_progress": False}]}
    (tmp_path / "chain.json").write_text(json.dumps(spec))
    configs, out = load_chain(tmp_path / "chain.json")
    assert configs[0].base == str(tiny) and configs[0].out == str(tmp_path / "chain" / "0-simcse")
    assert configs[1].base == str(tmp_path / "chain" / "0-simcse" / "model")
    assert main(["chain", str(tmp_path / "chain.json")]) == 0
    summary = json.loads((tmp_path / "chain" / "chain.json").read_text())
    assert [s["objective"] for s in summary] == ["simcse", "supervised"]
    assert summary[1]["base"].endswith("0-simcse/model") and 0 <= summary[1]["after"] <= 1
    # a second run finds both steps finished and trains nothing
    stamp = (tmp_path / "chain" / "1-supervised" / "model" / "model.safetensors").stat().st_mtime_ns
    run_chain(configs, out)
    assert (tmp_path / "chain" / "1-supervised" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    # a step killed before it saved its model is resumed in its own folder
    shutil.rmtree(tmp_path / "chain" / "1-supervised" / "model")
    run_chain(configs, out)
    assert (tmp_path / "chain" / "1-supervised" / "model" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "chain" / "1-supervised" / "config.json").read_text())["config"]["base"] == \
        configs[1].base
    for bad, match in (({"steps": []}, "'out'"), ({"out": "x", "steps": []}, "non-empty"),
                       ({"out": "x", "steps": [{"objective": "simcse", "corpus": beir}, {"objective": "supervised",
                         "data": beir, "base": "minilm"}]}, "set by the chain"),
                       ({"out": "x", "steps": [{"objective": "nope"}]}, "steps\\[0\\]"),
                       ({"out": "x", "steps": [{"objective": "simcse"}], "extra": 1}, "unknown key")):
        with pytest.raises(ValueError, match=match):
            chain_configs(bad)
