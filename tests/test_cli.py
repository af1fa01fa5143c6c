"""The `retrieval` command: index -> search -> eval, JSON output, and clean errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.cli import main
from retrieval.sample import sample_dir


def test_index_search_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", str(sample_dir()), "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    assert "indexed 80 documents with bm25" in capsys.readouterr().out
    assert main(["search", str(tmp_path / "idx"), "why does bread dough rise", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["id"] == "d31"
    assert main(["search", str(tmp_path / "idx"), "yeast", "-k", "1"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["rank", "score", "id", "text"] and "d31" in table


def test_eval_on_beir_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_file = tmp_path / "run.trec"
    assert main(["eval", "--beir-dir", str(sample_dir()), "--quiet", "--json", "--run-out", str(run_file)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == 24 and summary["method"] == "bm25"
    assert 0.8 < summary["metrics"]["nDCG@10"] <= 1.0
    assert len(run_file.read_text().splitlines()) > 24


def test_bad_input_exits_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "ok"}\n{"_id": "a", "text": "dup"}\n')
    assert main(["index", str(bad), "--out", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl, line 2: duplicate document id 'a'" in err and "Traceback" not in err
    assert main(["search", str(tmp_path / "missing"), "q"]) == 2
    assert "no such index folder" in capsys.readouterr().err


def test_console_script_entry_point(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "retrieval.cli", "demo", "--methods", "bm25"],
                         capture_output=True, text=True, check=True).stdout
    assert "Bundled sample: 80 documents, 24 queries" in out and "[bm25]" in out


def test_search_with_a_cross_encoder_reranker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.tiny_rerank_models import write_tiny_bert_cross_encoder

    ce = write_tiny_bert_cross_encoder(tmp_path / "ce")
    assert main(["index", str(sample_dir()), "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), "water energy light heat cells", "-k", "3", "--json",
                 "--rerank", f"cross-encoder:{ce}", "--rerank-depth", "5", "--rerank-option", "batch_size=2"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all("first_stage_score" in h["extra"] for h in hits)
    assert main(["search", str(tmp_path / "idx"), "q", "--rerank", f"cross-encoder:{ce}", "--rerank-option", "nonsense=1"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "idx"), "q", "--rerank", "cross-encoder:no/such-model"]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("method, extra", [("dense", ["--index", "hnsw", "--bf16"]),
                                           ("hybrid", ["--index", "flat", "--fusion", "linear", "--int8"])])
def test_dense_and_hybrid_index_search_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            method: str, extra: list[str]) -> None:
    pytest.importorskip("faiss")
    from helpers.tiny_encoder import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny")
    idx = tmp_path / "idx"
    assert main(["index", str(sample_dir()), "--out", str(idx), "--quiet", "--method", method,
                 "--model", str(model), *extra]) == 0
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["method"] == method
    capsys.readouterr()
    assert main(["search", str(idx), "why does bread dough rise", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and len({h["id"] for h in hits}) == 3
    assert main(["eval", "--beir-dir", str(sample_dir()), "--index-dir", str(idx), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == method and summary["queries"] == 24 and 0 <= summary["metrics"]["nDCG@10"] <= 1
    assert main(["eval", "--beir-dir", str(sample_dir()), "--quiet", "--json", "--method", method,
                 "--model", str(model), *extra]) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    assert rebuilt["metrics"]["nDCG@10"] == pytest.approx(summary["metrics"]["nDCG@10"], abs=1e-6)
