"""GPL on a tiny corpus with tiny random models: the query filter, cached and resumable stages, training, the CLI."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("sentence_transformers")

from retrieval.errors import DataError  # noqa: E402
from training import GPLConfig, run  # noqa: E402
from training.gpl import pipeline  # noqa: E402
from training.gpl.cache import Stage  # noqa: E402
from training.gpl.filter import copy_overlap, filter_queries, normalise_query  # noqa: E402

from helpers.tiny_beir import write_beir_folder  # noqa: E402
from helpers.tiny_generators import write_tiny_chat_lm, write_tiny_seq2seq  # noqa: E402
from helpers.tiny_rerank_models import write_tiny_bert_cross_encoder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DOCS = {
    "d1": "mice cancer cells gene protein in the heart", "d2": "cancer protein cells cause disease in mice",
    "d3": "heart disease protein rate and the gene", "d4": "paris tower built of iron in the city",
    "d5": "river water city and the music of paris", "d6": "music song city in the river light",
    "d7": "plants light energy from water and the river", "d8": "heart gene mice cells and the protein rate",
    "d9": "water plants energy light in the city", "d10": "tower city music song built of iron",
}
QUERIES = {"q1": "what causes cancer in mice", "q2": "heart disease", "q3": "tower in paris"}
QRELS = {"q1": {"d1": 1}, "q2": {"d3": 1}, "q3": {"d4": 1}}


def write_beir(folder: Path) -> Path:
    return write_beir_folder(folder, DOCS, QUERIES, QRELS, ("test",))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    from helpers.tiny_encoder import make_tiny_model

    root = tmp_path_factory.mktemp("gpl-models")
    return {"beir": str(write_beir(root / "beir")), "base": str(make_tiny_model(root / "bi")),
            "teacher": "cross-encoder:" + str(write_tiny_bert_cross_encoder(root / "ce")),
            "seq2seq": "seq2seq:" + str(write_tiny_seq2seq(root / "t5")),
            "llm": "llm:" + str(write_tiny_chat_lm(root / "lm"))}


def _config(models: dict[str, str], out: Path, **overrides) -> GPLConfig:
    values = dict(corpus=models["beir"], out=str(out), base=models["base"], generator=models["seq2seq"],
                  cross_encoder=models["teacher"], queries_per_doc=2, max_query_tokens=8, min_words=3,
                  num_negatives=2, negatives_depth=5, negatives_from="bm25", chunk_size=3, batch_size=4,
                  max_seq_length=32, label_max_seq_length=64, max_steps=4, show_progress=False, device="cpu")
    return GPLConfig(**{**values, **overrides})


class FakeGenerator:
    """Per document: a good query, its repeat, an empty reply, a copy of the document, and an off-topic query."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def generate(self, passage: str, n: int, seed: int) -> list[str]:
        self.calls.append(passage)
        first = passage.split()[0]
        replies = [f"1. Query: \"why {first} matters\"", f"Why {first}  matters?", "  \n",
                   " ".join(passage.split()[:4]), "what is the point"]
        return replies[:n]


def _fake_generator(monkeypatch) -> FakeGenerator:
    fake = FakeGenerator()
    monkeypatch.setattr(pipeline, "load_generator", lambda *a, **k: fake)
    return fake


# --- the filter -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [('1. Query: "What causes cancer?"', "What causes cancer?"),
                                           ("\n - mice   cells\nsecond line", "mice cells"),
                                           ("Search query: heart rate", "heart rate"),
                                           ("1.5 mg dose", "1.5 mg dose"), ("“”", ""),
                                           ("What is X? It is Y.", "What is X?")])
def test_normalise_query_keeps_one_clean_line(raw, expected) -> None:
    assert normalise_query(raw) == expected


@given(st.text(alphabet=st.sampled_from(list("ab1 .:-*\"(\n\t?Q")), max_size=40))
def test_a_reply_cut_at_its_first_line_normalises_to_the_same_query(raw: str) -> None:
    from retrieval.rerank.llm.prompts import first_line, first_line_end

    assert normalise_query(first_line(raw)) == normalise_query(raw)   # generation may stop there
    end = first_line_end(raw)
    assert end is None or (raw[end] == "\n" and first_line(raw) == raw[:end])


def test_first_line_waits_for_a_line_with_a_word() -> None:
    from retrieval.rerank.llm.prompts import first_line_end

    assert first_line_end("\n  \n- \nWhy mice?\nmore") == 16
    assert first_line_end("Why mice?") is None and first_line_end("\n\n") is None


def test_copy_overlap_counts_word_trigrams_found_in_the_document() -> None:
    doc = "The mice were fed a diet rich in fat"
    assert copy_overlap("mice were fed a diet", doc) == 1.0
    assert copy_overlap("were mice fed a diet", doc) == pytest.approx(1 / 3)
    assert copy_overlap("mice diet", doc) == 0.0          # under 3 words: never a copy


def test_filter_counts_empty_duplicate_and_copied_queries() -> None:
    raw = {"d1": ["What causes cancer in mice?", "what causes  cancer, in mice", "", "The mice were fed a diet"],
           "d2": ["WHAT causes cancer in mice", "heart rate of mice", "What is the main finding of this study?"]}
    docs = {"d1": "The mice were fed a diet rich in fat", "d2": "Heart rate"}
    kept, counts = filter_queries(raw, docs, copy_threshold=0.75)
    assert [(q.qid, q.doc, q.text) for q in kept] == [("d1-q0", "d1", "What causes cancer in mice?"),
                                                     ("d2-q1", "d2", "heart rate of mice")]
    assert counts.to_dict() == {"generated": 7, "kept": 2, "dropped": {"empty": 1, "duplicate_in_doc": 1,
                                                                       "duplicate_global": 1, "copied": 1,
                                                                       "off_topic": 1, "copied_example": 0}}


def test_queries_that_repeat_a_worked_example_are_dropped() -> None:
    raw = {"d1": ["Mice fed fat gain weight.", "mice fed fat gain weight", "Mice fed fat gain weight quickly",
                  "Fat diets change heart rate in mice"]}
    docs = {"d1": "The mice were fed a diet rich in fat and their heart rate rose"}
    kept, counts = filter_queries(raw, docs, 0.75, examples=["Mice fed fat gain weight."])
    assert [q.text for q in kept] == ["Fat diets change heart rate in mice"]
    # the repeat, its case variant, and a near-copy sharing 3 of its 4 word trigrams with the example
    assert counts.dropped["copied_example"] == 3 and counts.kept == 1
    assert filter_queries(raw, docs, 0.75)[1].dropped["copied_example"] == 0      # no examples: none dropped


# --- config and CLI ---------------------------------------------------------------------------------

def test_config_round_trips_and_refuses_bad_specs() -> None:
    import argparse

    from training.cli import add_train_command, config_from_args
    from training.registry import config_from_dict, config_to_dict

    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers(dest="command"))
    line = ("train gpl --corpus c --out o --generator llm:http://127.0.0.1:8080/v1#m --cross-encoder cross-encoder:ce "
            "--queries-per-doc 5 --negatives-from dense --eval-beir b --eval-split test")
    config = config_from_args(parser.parse_args(line.split()))
    assert config == GPLConfig(corpus="c", out="o", generator="llm:http://127.0.0.1:8080/v1#m", queries_per_doc=5,
                               cross_encoder="cross-encoder:ce", negatives_from="dense", eval_beir="b")
    assert (config.lr, config.batch_size) == (2e-5, 32)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    with pytest.raises(ValueError, match="cross_encoder must be cross-encoder:MODEL"):
        GPLConfig(corpus="c", out="o", cross_encoder="llm-yesno:smollm2")
    with pytest.raises(ValueError, match="generator must be"):
        GPLConfig(corpus="c", out="o", cross_encoder="cross-encoder:ce", generator="t5:x")


# --- cached stages ----------------------------------------------------------------------------------

def test_each_stage_is_cached_with_its_counts_and_a_rerun_skips_it(models, tmp_path, monkeypatch) -> None:
    fake = _fake_generator(monkeypatch)
    config = _config(models, tmp_path / "run", queries_per_doc=5)
    triples = pipeline.gpl_triples(config)
    assert len(fake.calls) == len(DOCS)
    manifest = json.loads((tmp_path / "run" / "gpl" / "queries" / "manifest.json").read_text())
    # d8 starts with "heart" as d3 does: both its "why heart matters" are duplicates of d3's
    assert manifest["stats"] == {"generated": 50, "kept": 9, "dropped": {"empty": 10, "duplicate_in_doc": 9,
                                                                         "duplicate_global": 2, "copied": 10,
                                                                         "off_topic": 10, "copied_example": 0}}
    assert len(triples) == 9 * 2 and "why mice matters" in {t.query for t in triples}
    for stage in ("generate", "queries", "negatives", "labels"):
        assert json.loads((tmp_path / "run" / "gpl" / stage / "manifest.json").read_text())["complete"]

    def refuse(*args, **kwargs):
        raise AssertionError("a cached stage ran again")
    for name in ("load_generator", "filter_queries", "mine_negatives", "load_teacher"):
        monkeypatch.setattr(pipeline, name, refuse)
    assert pipeline.gpl_triples(config) == triples


def test_a_changed_setting_recomputes_its_stage_and_those_after_it(models, tmp_path, monkeypatch, caplog) -> None:
    fake = _fake_generator(monkeypatch)
    config = _config(models, tmp_path / "run", queries_per_doc=5)
    pipeline.gpl_triples(config)
    calls = len(fake.calls)
    changed = dataclasses.replace(config, copy_threshold=1.0, num_negatives=1)
    with caplog.at_level("WARNING", logger="training.gpl.cache"):
        triples = pipeline.gpl_triples(changed)
    assert len(fake.calls) == calls                                  # generation reused
    assert "copy_threshold" in caplog.text and "num_negatives" in caplog.text
    stats = json.loads((tmp_path / "run" / "gpl" / "queries" / "manifest.json").read_text())["stats"]
    assert stats["dropped"]["copied"] == 10 and len(triples) == stats["kept"]   # verbatim copies; one negative each
    pipeline.gpl_triples(dataclasses.replace(changed, queries_per_doc=2))
    assert len(fake.calls) == calls + len(DOCS)                     # a generator setting regenerates


def _recording_generator(monkeypatch) -> list[dict]:
    """Replace the generator loader by a fake one; the returned list fills with the options of each load."""
    fake, seen = FakeGenerator(), []

    def load(*args, **kwargs):
        seen.append(kwargs)
        return fake
    monkeypatch.setattr(pipeline, "load_generator", load)
    return seen


def _generation_key(out: Path) -> dict:
    return json.loads((out / "gpl" / "generate" / "manifest.json").read_text())["key"]


def test_plain_generator_buffers_reach_llama_cpp_and_key_the_generation_cache(models, tmp_path, monkeypatch) -> None:
    seen = _recording_generator(monkeypatch)
    config = _config(models, tmp_path / "run", generator="llama-cpp:smollm2", generator_convert="q8_0")
    pipeline.gpl_triples(config)
    key = _generation_key(tmp_path / "run")
    assert "buffers" not in key and seen[-1]["extra_buffers"] is True   # the default keeps older caches valid
    pipeline.gpl_triples(dataclasses.replace(config, generator_buffers="plain"))
    assert len(seen) == 2 and seen[-1]["extra_buffers"] is False         # another runtime: generated again
    key = _generation_key(tmp_path / "run")
    assert key["buffers"] == "plain"
    with pytest.raises(ValueError, match="generator_buffers"):
        dataclasses.replace(config, generator_buffers="amx")


def test_llm_generator_batching_and_dtype_reach_transformers_and_key_the_cache(models, tmp_path, monkeypatch) -> None:
    seen = _recording_generator(monkeypatch)
    config = _config(models, tmp_path / "run", generator=models["llm"])
    pipeline.gpl_triples(config)
    key = _generation_key(tmp_path / "run")
    assert key["batch"] == 16 and "dtype" not in key and (seen[-1]["batch_size"], seen[-1]["dtype"]) == (16, None)
    pipeline.gpl_triples(dataclasses.replace(config, generator_dtype="bfloat16", generator_batch_size=4))
    key = _generation_key(tmp_path / "run")
    assert len(seen) == 2 and (key["batch"], key["dtype"]) == (4, "bfloat16")
    assert (seen[-1]["batch_size"], seen[-1]["dtype"]) == (4, "bfloat16")
    with pytest.raises(ValueError, match="generator_dtype"):
        dataclasses.replace(config, generator_dtype="int3")


def test_the_llm_generator_batches_a_chunk_as_it_would_write_each_query_alone(models) -> None:
    from retrieval.rerank.llm.prompts import first_line
    from training.gpl.generate import generate_all, load_generator, query_prompt

    passages = ["mice cancer cells gene", "tower paris iron city music song built", "heart"]
    batched = load_generator(models["llm"], max_tokens=6, batch_size=4)
    one = load_generator(models["llm"], max_tokens=6, batch_size=1)
    replies = generate_all(batched, passages, 2, [0, 1, 2])
    assert replies == generate_all(one, passages, 2, [0, 1, 2])
    assert replies == [[first_line(one.backend.complete(query_prompt(p, i), 6)) for i in range(2)] for p in passages]


# --- worked examples (few-shot generation) ------------------------------------------------------------

def _write_examples(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_worked_examples_come_from_a_beir_split_or_a_jsonl_file(models, tmp_path) -> None:
    from training.gpl.generate import Example, example_sets, read_examples

    beir = read_examples(models["beir"], "test", max_words=3)
    assert beir == [Example("what causes cancer in mice", "mice cancer cells"), Example("heart disease", "heart disease protein"),
                    Example("tower in paris", "paris tower built")]
    path = _write_examples(tmp_path / "ex.jsonl", [{"query": f"q{i}", "passage": f"p{i} x"} for i in range(7)])
    examples = read_examples(str(path))
    sets = example_sets(examples, shots=2, sets=3, seed=1)
    assert [len(s) for s in sets] == [2, 2, 2] and len({e for s in sets for e in s}) == 6      # disjoint
    assert sets == example_sets(examples, 2, 3, seed=1) != example_sets(examples, 2, 3, seed=2)  # seeded
    assert len(example_sets(examples, shots=3, sets=5, seed=0)) == 2     # too few for 5 sets: 2 sets, reused in turn
    with pytest.raises(ValueError, match="only 7 examples"):
        example_sets(examples, shots=8, sets=1, seed=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "passage": "b"}\n\n{"query": "a"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: .*\"passage\""):
        read_examples(str(bad))
    bad.write_text('{"query": "a", "passage": "b"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not JSON"):
        read_examples(str(bad))
    with pytest.raises(DataError, match="no such BEIR folder or JSONL file"):
        read_examples(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no such split"):
        read_examples(models["beir"], "train")


def test_worked_examples_are_earlier_chat_turns_one_set_per_query(models) -> None:
    from training.gpl.generate import EXAMPLE_INSTRUCTION, Example, load_generator, query_prompt

    sets = [[Example("mice and fat", "mice fed fat")], [Example("heart rate", "heart beats"), Example("iron", "tower")]]
    second = query_prompt("the passage", 1, sets)
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert second[2]["content"] == "heart rate" and second[3]["content"] == f"Passage: tower\n\n{EXAMPLE_INSTRUCTION}"
    assert second[-1]["content"] == f"Passage: the passage\n\n{EXAMPLE_INSTRUCTION}"
    assert query_prompt("the passage", 2, sets) == query_prompt("the passage", 0, sets)   # sets taken in turn
    assert len(query_prompt("the passage", 0)) == 2                                          # zero-shot as before
    generator = load_generator(models["llm"], max_tokens=6, examples=sets)     # the tiny chat model's template
    rendered = generator.backend.render(query_prompt("the passage", 1, sets))
    assert rendered.index("heart beats") < rendered.index("heart rate") < rendered.index("the passage")
    assert len(generator.generate("mice cancer cells gene", 2, seed=0)) == 2
    with pytest.raises(ValueError, match="seq2seq generator takes no worked examples"):
        load_generator(models["seq2seq"], examples=sets)


def test_worked_examples_reach_the_generator_key_its_cache_and_are_never_trained_on(models, tmp_path,
                                                                                    monkeypatch) -> None:
    from training.gpl.generate import read_examples

    examples = _write_examples(tmp_path / "ex.jsonl", [{"query": "Why mice matters", "passage": "mice cells"},
                                                       {"query": "paris tower iron", "passage": "paris tower"},
                                                       {"query": "heart disease rate", "passage": "heart rate"}])
    seen = _recording_generator(monkeypatch)
    config = _config(models, tmp_path / "run", generator=models["llm"], queries_per_doc=5)
    pipeline.gpl_triples(config)
    assert seen[-1]["examples"] == [] and "examples" not in _generation_key(tmp_path / "run")
    few = dataclasses.replace(config, generator_examples=str(examples), generator_shots=1)
    triples = pipeline.gpl_triples(few)
    assert len(seen) == 2                                                    # generated again, with the examples
    assert seen[-1]["examples"] == pipeline.worked_examples(few) and len(seen[-1]["examples"]) == 3
    assert sorted(e.query for s in seen[-1]["examples"] for e in s) == sorted(e.query for e in read_examples(str(examples)))
    assert "examples" in _generation_key(tmp_path / "run")
    stats = json.loads((tmp_path / "run" / "gpl" / "queries" / "manifest.json").read_text())["stats"]
    # FakeGenerator writes "why mice matters" for d1 and d8: an example's query, so dropped, never trained on
    assert stats["dropped"]["copied_example"] == 2 and "why mice matters" not in {t.query.lower() for t in triples}
    with pytest.raises(ValueError, match="evaluation split 'test'"):
        dataclasses.replace(few, generator_examples=models["beir"], generator_examples_split="test",
                            eval_beir=models["beir"])
    with pytest.raises(ValueError, match="seq2seq generators take no generator_examples"):
        dataclasses.replace(few, generator=models["seq2seq"])


def test_real_queries_replace_generation_and_are_labelled_like_generated_ones(models, tmp_path, monkeypatch) -> None:
    seen = _recording_generator(monkeypatch)
    config = _config(models, tmp_path / "run", queries_from=models["beir"], queries_split="test")
    triples = pipeline.gpl_triples(config)
    assert not seen and not (tmp_path / "run" / "gpl" / "generate").exists()      # nothing generated
    assert [t.query for t in triples] == [q for q in QUERIES.values() for _ in range(2)]   # 2 negatives each
    mined = [json.loads(line) for line in (tmp_path / "run" / "gpl" / "negatives" / "negatives.jsonl").open()]
    assert [(m["qid"], m["positive"]) for m in mined] == [("real-q1", "d1"), ("real-q2", "d3"), ("real-q3", "d4")]
    assert all(m["positive"] not in m["negatives"] for m in mined)
    assert {t.positive for t in triples} == {DOCS["d1"], DOCS["d3"], DOCS["d4"]}
    with pytest.raises(ValueError, match="evaluation split 'test'"):
        dataclasses.replace(config, eval_beir=models["beir"])
    with pytest.raises(ValueError, match="replaces generation"):
        dataclasses.replace(config, generator_examples=models["beir"])
    other = write_beir_folder(tmp_path / "other", {"x1": "unknown document text here"}, {"q9": "a query"},
                              {"q9": {"x1": 1}}, ("train",))
    with pytest.raises(DataError, match=r"query 'q9' judges document 'x1', which is not in --corpus"):
        pipeline.gpl_triples(dataclasses.replace(config, queries_from=str(other), queries_split="train"))


def test_the_round_trip_filter_keeps_the_queries_whose_document_the_teacher_ranks_high(models, tmp_path,
                                                                                      monkeypatch) -> None:
    _fake_generator(monkeypatch)
    config = _config(models, tmp_path / "run", queries_per_doc=5, teacher_interpolate=0.5, teacher_depth=4)
    everything = pipeline.gpl_triples(config)
    rows = [json.loads(line) for f in sorted((tmp_path / "run" / "gpl" / "labels").glob("chunk-*.jsonl"))
            for line in f.open()]
    assert all(isinstance(r["rank"], int) and r["rank"] >= 1 for r in rows)
    # the rank counts the candidates the fused teacher scores above the positive; among them are its negatives
    assert all(r["rank"] - 1 >= sum(n > r["positive"] for n in r["negatives"]) for r in rows)
    assert len({r["rank"] for r in rows}) > 1                               # the filter has something to choose
    for depth in (1, 2):
        kept = pipeline.gpl_triples(dataclasses.replace(config, consistency_depth=depth))
        wanted = [r for r in rows if r["rank"] <= depth]
        assert len(kept) == 2 * len(wanted)                                 # num_negatives triples per kept query
        assert [t.margin for t in kept] == pytest.approx([r["positive"] - n for r in wanted for n in r["negatives"]])
        stats = json.loads((tmp_path / "run" / "gpl" / "consistency" / "manifest.json").read_text())["stats"]
        assert (stats["queries"], stats["kept"], stats["depth"]) == (len(rows), len(wanted), depth)
    assert len(pipeline.gpl_triples(dataclasses.replace(config, consistency_depth=99))) == len(everything)
    for f in (tmp_path / "run" / "gpl" / "labels").glob("chunk-*.jsonl"):    # labels cached before ranks existed
        f.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "rank"}) + "\n"
                             for line in f.open()))
    assert len(pipeline.gpl_triples(config)) == len(everything)              # still fine without the filter
    with pytest.raises(DataError, match="labelled before ranks were recorded"):
        pipeline.gpl_triples(dataclasses.replace(config, consistency_depth=1))


def test_fit_scale_fits_the_student_margins_to_the_teacher_once_and_resumes_with_it(models, tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    from training.gpl import margin_mse

    config = _config(models, tmp_path / "run", fit_scale=True)
    triples = pipeline.gpl_triples(config)
    model = SentenceTransformer(models["base"], device="cpu")
    objective = margin_mse.build(config, model, triples)
    manifest = json.loads((tmp_path / "run" / "gpl" / "scale" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["stats"]["scale"] == objective.loss.scale > 0
    q, pos, neg = (model.encode([getattr(t, f) for t in triples]) for f in ("query", "positive", "negative"))
    student = (q * pos).sum(1) - (q * neg).sum(1)
    teacher = np.array([t.margin for t in triples])
    best = float(student @ teacher / (student @ student))            # the closed form, computed independently
    assert objective.loss.scale == pytest.approx(best, rel=1e-4)
    loss = lambda s: float(((s * student - teacher) ** 2).sum())    # noqa: E731
    assert loss(best) <= min(loss(best * 0.9), loss(best * 1.1), loss(1.0))
    assert margin_mse.build(config, model, triples).loss.scale == objective.loss.scale   # read back, not refitted
    flipped = [dataclasses.replace(t, margin=-float(s) * 3) for t, s in zip(triples, student)]
    with pytest.raises(ValueError, match="do not agree with the teacher"):
        margin_mse.fitted_scale(model, flipped)
    with pytest.raises(ValueError, match="scale or fit_scale"):
        dataclasses.replace(config, scale=5.0)


def test_a_fused_teacher_labels_with_the_rerankers_fusion_over_bm25s_top_n(models, tmp_path, monkeypatch) -> None:
    """--teacher-interpolate W: each label is W*minmax(CE) + (1-W)*minmax(BM25) over BM25's top-N plus the
    positive and negatives, recomputed independently here; only the label stage reruns when it is switched on."""
    from sentence_transformers import CrossEncoder
    import torch

    from retrieval import Retriever

    fake = _fake_generator(monkeypatch)
    config = _config(models, tmp_path / "run", queries_per_doc=5)
    plain = pipeline.gpl_triples(config)
    calls = len(fake.calls)
    fused_config = dataclasses.replace(config, teacher_interpolate=0.3, teacher_depth=2)
    triples = pipeline.gpl_triples(fused_config)
    assert len(fake.calls) == calls and len(triples) == len(plain)          # generation and mining reused
    labels = json.loads((tmp_path / "run" / "gpl" / "labels" / "manifest.json").read_text())
    assert (labels["key"]["teacher_interpolate"], labels["key"]["teacher_depth"]) == (0.3, 2)
    assert "W=0.3" in labels["stats"]["teacher"]

    mined = [json.loads(line) for line in (tmp_path / "run" / "gpl" / "negatives" / "negatives.jsonl").open()]
    queries = {r["qid"]: r["text"] for r in map(json.loads, (tmp_path / "run" / "gpl" / "queries" /
                                                             "queries.jsonl").open())}
    bm25 = Retriever.from_documents(models["beir"], method="bm25", show_progress=False)
    ce = CrossEncoder(models["teacher"].partition(":")[2], device="cpu", max_length=64)
    expected, outside = [], 0
    for row in mined:
        query = queries[row["qid"]]
        every = {h.id: float(h.score) for h in bm25.retrieve(query, k=len(DOCS))}
        candidates = list(dict.fromkeys([h.id for h in bm25.retrieve(query, k=2)] + [row["positive"]]
                                        + row["negatives"]))
        outside += len(candidates) > 2
        first = np.array([every.get(d, 0.0) for d in candidates])
        logits = np.asarray(ce.predict([(query, DOCS[d]) for d in candidates],
                                       activation_fn=torch.nn.Identity()), dtype=np.float64)
        span = lambda v: (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)  # noqa: E731
        score = dict(zip(candidates, 0.3 * span(logits) + 0.7 * span(first)))
        expected += [score[row["positive"]] - score[d] for d in row["negatives"]]
    assert outside > 0                      # some positives or negatives lie below BM25's top-2
    # float32 logits of a tiny model, batched differently, then min-max stretched: agree to 5e-4
    np.testing.assert_allclose([t.margin for t in triples], expected, atol=5e-4)
    assert all(-1.0 <= t.margin <= 1.0 for t in triples)
    with pytest.raises(ValueError, match="teacher_interpolate"):
        dataclasses.replace(config, teacher_interpolate=1.5)


def _stop_after(monkeypatch, chunks: int) -> None:
    """Make the ``chunks``+1-th chunk write raise, as a kill between chunks would stop the stage."""
    original, written = Stage.write_chunk, []

    def write_chunk(self, start, end, rows):
        if len(written) == chunks:
            raise KeyboardInterrupt("killed")
        written.append(start)
        return original(self, start, end, rows)
    monkeypatch.setattr(Stage, "write_chunk", write_chunk)


@pytest.mark.parametrize("stage, before, fused", [("generate", 2, None), ("labels", 1 + 4, None),
                                                  ("labels", 1 + 4, 0.5)])   # 4 generation chunks come first
def test_a_stage_stopped_between_chunks_resumes_to_the_same_result(models, tmp_path, monkeypatch, stage, before,
                                                                   fused):
    reference = pipeline.gpl_triples(_config(models, tmp_path / "reference", teacher_interpolate=fused))
    config = _config(models, tmp_path / "run", teacher_interpolate=fused)
    with monkeypatch.context() as m:
        _stop_after(m, before)
        with pytest.raises(KeyboardInterrupt):
            pipeline.gpl_triples(config)
    folder = tmp_path / "run" / "gpl" / stage
    assert not json.loads((folder / "manifest.json").read_text())["complete"]
    assert len(list(folder.glob("chunk-*.jsonl"))) == (2 if stage == "generate" else 1)
    assert pipeline.gpl_triples(config) == reference
    stats = json.loads((folder / "manifest.json").read_text())["stats"]
    assert stats.get("resumed_at_document", stats.get("resumed_at_query")) == (6 if stage == "generate" else 3)


def test_training_stopped_after_a_checkpoint_resumes_to_the_same_weights(models, tmp_path, monkeypatch) -> None:
    import torch
    from safetensors.torch import load_file

    import training.trainer as trainer

    config = _config(models, tmp_path / "run", max_steps=6, checkpoint_every=2, lr=1e-3)
    straight = load_file(str(run(_config(models, tmp_path / "ref", max_steps=6, checkpoint_every=2, lr=1e-3))
                             / "model.safetensors"))
    original = trainer.save_checkpoint

    def save_then_die(out, step, *args):
        original(out, step, *args)
        if step == 4:
            raise KeyboardInterrupt("killed")
    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.undo()
    resumed = load_file(str(run(dataclasses.replace(config, resume=True)) / "model.safetensors"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["resumed_from"] == 4 and metrics["objective"] == "gpl"
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in straight)


def test_a_damaged_cache_file_is_an_error_naming_its_line(models, tmp_path, monkeypatch) -> None:
    _fake_generator(monkeypatch)
    config = _config(models, tmp_path / "run")
    pipeline.gpl_triples(config)
    path = tmp_path / "run" / "gpl" / "queries" / "queries.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + ['{"qid": "d2-q0", "doc"'] + lines[2:]) + "\n")
    with pytest.raises(DataError, match=r"queries\.jsonl, line 2: malformed JSON"):
        pipeline.gpl_triples(config)


def test_the_llm_generator_runs_a_chat_model_greedily(models) -> None:
    from training.gpl.generate import load_generator

    generator = load_generator(models["llm"], max_tokens=6)
    first = generator.generate("mice cancer cells gene", 2, seed=0)
    assert len(first) == 2 and all(isinstance(q, str) for q in first)
    assert generator.generate("mice cancer cells gene", 2, seed=1) == first   # greedy: the seed does not matter


# --- the command --------------------------------------------------------------------------------------

def _argv(models: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["gpl", "--corpus", models["beir"], "--out", str(out), "--base", models["base"], "--generator",
            models["seq2seq"], "--cross-encoder", models["teacher"], "--queries-per-doc", "2", "--negatives-from",
            "both", "--negatives-depth", "5", "--num-negatives", "2", "--min-words", "3", "--max-query-tokens", "8",
            "--chunk-size", "1", "--batch-size", "4", "--max-seq-length", "32", "--label-max-seq-length", "64",
            "--max-steps", "30", "--checkpoint-every", "2", "--device", "cpu", "--threads", "1", "--no-progress",
            *extra]


def test_the_command_runs_gpl_and_evaluates_before_and_after(models, tmp_path, capsys) -> None:
    from training.cli import main

    assert main(_argv(models, tmp_path / "gpl", "--eval-beir", models["beir"], "--eval-split", "test")) == 0
    assert f"model: {tmp_path / 'gpl' / 'model'}" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "gpl" / "metrics.json").read_text())
    assert metrics["objective"] == "gpl" and metrics["steps"] == 30 and 0 <= metrics["after"]["nDCG@10"] <= 1
    assert "p_value" in metrics["after_vs_before"]


def test_a_bad_corpus_line_is_an_error_naming_the_file_and_line(models, tmp_path, capsys) -> None:
    from training.cli import main

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"_id": "a", "text": "mice cancer cells gene"}\n{"_id": "b", "text": \n')
    argv = _argv(models, tmp_path / "gpl")
    argv[argv.index("--corpus") + 1] = str(corpus)
    assert main(argv) == 2
    assert f"{corpus}, line 2" in capsys.readouterr().err


def test_a_killed_run_resumes_to_the_same_model(models, tmp_path) -> None:
    """SIGKILL the whole command mid-generation, then rerun with --resume: the same queries, labels and weights."""
    import torch
    from safetensors.torch import load_file

    from training.cli import main

    assert main(_argv(models, tmp_path / "reference")) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-m", "training", *_argv(models, out)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((out / "gpl" / "generate").glob("chunk-*")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL and not (out / "model").exists()
    assert main(_argv(models, out, "--resume")) == 0
    for name in ("generate", "labels"):
        rows = lambda folder: [p.read_text() for p in sorted((folder / "gpl" / name).glob("chunk-*"))]  # noqa: E731
        assert "".join(rows(out)) == "".join(rows(tmp_path / "reference"))
    resumed, straight = (load_file(str(f / "model" / "model.safetensors")) for f in (out, tmp_path / "reference"))
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in straight)


@pytest.mark.model
def test_the_bundled_llm_writes_queries_for_a_real_document(scifact_docs) -> None:
    pytest.importorskip("llama_cpp")
    from training.gpl.generate import load_generator

    doc = scifact_docs[0]
    generator = load_generator("llama-cpp:smollm2", max_tokens=32, threads=1)   # 1 thread: no spinning on a busy CPU
    replies = generator.generate(" ".join(doc.full_text.split()[:200]), 3, seed=0)
    kept, counts = filter_queries({doc.id: replies}, {doc.id: doc.full_text})
    assert counts.generated == 3 and counts.kept >= 1 and all(q.text for q in kept)


# --- extractive queries (inverse cloze) -----------------------------------------------------------------

TITLED = {
    "t1": ("Mice lacking the gene develop cancer", "We bred mice without the gene. Tumours grew in most of them. "
           "The gene protects mice from cancer."),
    "t2": ("Iron towers of Paris", "The tower was built of iron. It stands in the city by the river."),
    "t3": ("Short", "Only one sentence here about plants and light."),
    "t4": ("", "River water feeds the plants. Light gives them energy. Music plays in the city."),
}


def _write_titled(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                                                 for i, (t, x) in TITLED.items()), encoding="utf-8")
    return folder


def test_cut_query_takes_the_title_the_last_or_a_seeded_sentence_out_of_its_document() -> None:
    import random

    from retrieval.types import Document
    from training.gpl.extract import cut_query

    docs = {i: Document(i, x, t) for i, (t, x) in TITLED.items()}
    query, rest = cut_query(docs["t1"], "title", random.Random(0))
    assert query == "Mice lacking the gene develop cancer" and rest.title == "" and rest.text == docs["t1"].text
    query, rest = cut_query(docs["t1"], "last", random.Random(0))
    assert query == "The gene protects mice from cancer." and query not in rest.full_text
    assert rest.text == "We bred mice without the gene. Tumours grew in most of them."
    assert rest.title == docs["t1"].title
    picks = {cut_query(docs["t4"], "sentence", random.Random(seed))[0] for seed in range(20)}
    assert picks == {"River water feeds the plants.", "Light gives them energy.", "Music plays in the city."}
    assert cut_query(docs["t4"], "sentence", random.Random(5)) == cut_query(docs["t4"], "sentence", random.Random(5))
    for mode in ("title", "last", "sentence"):   # nothing would be left, or the query is under 4 words
        assert cut_query(docs["t3"], mode, random.Random(0)) is None
    assert cut_query(docs["t4"], "title", random.Random(0)) is None    # no title


@given(st.lists(st.sampled_from(["Cells grow.", "The heart rate rose in mice.", "Iron was used in the tower.",
                                 "no end here", "Cancer (2) fell.", "Light and water feed plants!"]),
                min_size=0, max_size=6), st.sampled_from(["title", "last", "sentence"]), st.integers(0, 99))
@settings(max_examples=60, deadline=None)
def test_an_extracted_query_is_never_left_in_its_document(parts, mode, seed) -> None:
    from retrieval.types import Document
    from training.gpl.extract import extract_queries

    doc = Document("d", " ".join(parts), "A title about cells and mice")
    queries, cut, counts = extract_queries([doc], [doc], mode, seed)
    assert counts.kept == len(queries) <= 1 and counts.kept + counts.too_short + counts.repeated == 1
    if not queries:
        assert cut == [doc]
    for q in queries:
        rest = cut[0]
        assert len(q.text.split()) >= 4 and rest.full_text.strip()
        assert q.text.lower() not in rest.full_text.lower()
        assert sorted((rest.title + " " + rest.text).split() + q.text.split()) == sorted(doc.full_text.split())


def test_extractive_queries_train_against_their_documents_with_the_query_cut_out(models, tmp_path, monkeypatch,
                                                                                 caplog) -> None:
    seen = _recording_generator(monkeypatch)
    corpus = _write_titled(tmp_path / "corpus")
    config = _config(models, tmp_path / "run", corpus=str(corpus), generator="extract:last")
    triples = pipeline.gpl_triples(config)
    assert not seen and not (tmp_path / "run" / "gpl" / "generate").exists()     # no model, no generation stage
    stage = Stage(tmp_path / "run" / "gpl" / "queries", json.loads(
        (tmp_path / "run" / "gpl" / "queries" / "manifest.json").read_text())["key"])
    assert stage.complete and stage.stats == {"documents": 4, "kept": 3, "too_short": 1, "repeated": 0}
    queries = {json.loads(line)["doc"]: json.loads(line)["text"]
               for line in (stage.folder / "queries.jsonl").open()}
    assert queries == {"t1": "The gene protects mice from cancer.", "t2": "It stands in the city by the river.",
                       "t4": "Music plays in the city."}
    assert {t.query for t in triples} == set(queries.values())
    for t in triples:   # the positive and every negative are cut texts: no query is ever in a training passage
        assert t.query not in t.positive and not any(q in t.negative for q in queries.values())
    assert "Mice lacking the gene develop cancer We bred mice without the gene. Tumours grew in most of them." in \
        {t.positive for t in triples}
    with caplog.at_level("WARNING"):
        again = pipeline.gpl_triples(config)
    assert again == triples and "recomputing" not in caplog.text
    titles = pipeline.gpl_triples(dataclasses.replace(config, generator="extract:title"))
    assert "recomputing" in caplog.text and {t.query for t in titles} == \
        {"Mice lacking the gene develop cancer", "Iron towers of Paris"}
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "corpus.jsonl").write_text(json.dumps({"_id": "t3", "title": "Short", "text": TITLED["t3"][1]}) + "\n")
    with pytest.raises(ValueError, match=r"none of 1 documents has a last to cut out .*'too_short': 1"):
        pipeline.gpl_triples(dataclasses.replace(config, corpus=str(bare), out=str(tmp_path / "bare-run")))


def test_extractive_generator_specs_are_checked() -> None:
    values = dict(corpus="c", out="o", cross_encoder="cross-encoder:t")
    assert GPLConfig(**values, generator="extract:sentence").generator == "extract:sentence"
    with pytest.raises(ValueError, match=r"extract:title\|last\|sentence, got 'extract:first'"):
        GPLConfig(**values, generator="extract:first")
    with pytest.raises(ValueError, match="extract generators take no generator_examples"):
        GPLConfig(**values, generator="extract:title", generator_examples="examples.jsonl")
    with pytest.raises(ValueError, match="replaces generation; drop --generator extract:last"):
        GPLConfig(**values, generator="extract:last", queries_from="beir", queries_split="train")


def test_extractive_queries_from_real_scifact_abstracts(scifact_docs) -> None:
    from training.gpl.extract import extract_queries

    docs = scifact_docs[:200]
    for mode in ("title", "last", "sentence"):
        queries, cut, counts = extract_queries(docs, docs, mode, seed=42)
        assert counts.kept + counts.too_short == 200 and counts.kept >= 190
        by_id = {d.id: d for d in cut}
        for q in queries:
            assert q.text not in by_id[q.doc].full_text and len(by_id[q.doc].full_text.split()) >= 20
