"""The `retrieval` command: index -> search -> eval, JSON output, and clean errors."""
from __future__ import annotations

import csv
import gzip
import json
import re
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from retrieval.cli import build_parser, main
from retrieval.errors import LLMError
from retrieval.retriever import Retriever
from retrieval.sample import sample_dir


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The last line on stderr, after checking that no traceback was printed."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


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
    assert main(["eval", str(sample_dir()), "--quiet", "--json", "--run-out", str(run_file)]) == 0
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


@pytest.mark.parametrize("argv, words", [
    (["search", "IDX", "q", "--rerank-depth", "0"], "argument --rerank-depth: expected an integer >= 1, got '0'"),
    (["search", "IDX", "q", "-k", "-3"], "argument -k: expected an integer >= 1, got '-3'"),
    (["eval", "IDX", "-k", "x"], "argument -k: expected an integer >= 1, got 'x'"),
    (["index", "IDX", "--out", "O", "--ray", "local", "--encode-gpus", "nan"], "expected a number >= 0, got 'nan'"),
])
def test_bad_numbers_are_usage_errors_not_a_damaged_index(argv, words, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """--rerank-depth 0 used to be reported as 'damaged index (ValueError: rerank_depth must be >= 1)'."""
    assert main(["index", str(sample_dir()), "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "idx") if a == "IDX" else a for a in argv])
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_run_out_that_is_a_folder_is_refused_before_evaluating(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import retrieval.cli as cli

    monkeypatch.setattr(cli, "load_beir", lambda *a, **k: pytest.fail("evaluated before --run-out was checked"))
    assert main(["eval", str(sample_dir()), "--run-out", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert "--run-out" in line and "is a folder; give a file path" in line


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
    assert main(["eval", str(sample_dir()), str(idx), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == method and summary["queries"] == 24 and 0 <= summary["metrics"]["nDCG@10"] <= 1
    assert main(["eval", str(sample_dir()), "--quiet", "--json", "--method", method,
                 "--model", str(model), *extra]) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    assert rebuilt["metrics"]["nDCG@10"] == pytest.approx(summary["metrics"]["nDCG@10"], abs=1e-6)


def test_eval_takes_positional_paths_and_still_the_old_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    idx = tmp_path / "idx"
    assert main(["index", str(sample_dir()), "--out", str(idx), "--quiet"]) == 0
    capsys.readouterr()
    summaries = []
    for argv in (["eval", str(sample_dir()), str(idx)], ["eval", "--beir-dir", str(sample_dir()), "--index-dir", str(idx)]):
        assert main([*argv, "--json"]) == 0
        summaries.append(json.loads(capsys.readouterr().out))
    assert summaries[0]["metrics"] == summaries[1]["metrics"] and summaries[0]["index"] == str(idx)
    assert main(["eval"]) == 2 and "DATA_DIR is required" in _error_line(capsys)
    assert main(["eval", str(sample_dir()), "--beir-dir", str(sample_dir())]) == 2
    assert "DATA_DIR given twice" in _error_line(capsys)
    assert main(["eval", str(tmp_path / "nope")]) == 2 and "nope: not a folder" in _error_line(capsys)
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    usage = capsys.readouterr().out
    assert "DATA_DIR [INDEX_DIR]" in usage and "--beir-dir" not in usage   # the old flags are hidden


def test_train_and_benchmark_are_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0 and {"tsdae", "cross-encoder"} <= set(re.findall(r"[\w-]+", capsys.readouterr().out))
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("index", "search", "eval", "demo", "benchmark", "train"))


def _fake_training_cli(monkeypatch: pytest.MonkeyPatch, error: ImportError) -> None:
    module = types.ModuleType("training.cli")

    def add_train_command(subparsers):
        raise error

    module.add_train_command = add_train_command
    monkeypatch.setitem(sys.modules, "training.cli", module)


def test_train_without_its_optional_dependencies_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _fake_training_cli(monkeypatch, ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert main(["train", "tsdae", "--corpus", "docs.jsonl"]) == 2
    line = _error_line(capsys)
    assert line.startswith("retrieval train: error:") and "torch is not installed: pip install 'retrievekit[train]'" in line


@pytest.mark.parametrize("error", [ImportError("cannot import name 'TrainConfig' from 'training.config'"),
                                   ModuleNotFoundError("No module named 'training.nope'", name="training.nope")])
def test_a_broken_training_import_is_not_hidden(monkeypatch: pytest.MonkeyPatch, error: ImportError) -> None:
    _fake_training_cli(monkeypatch, error)
    with pytest.raises(ImportError):
        build_parser()


def test_bad_files_and_options_are_one_line_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = (sample_dir() / "corpus.jsonl").read_bytes()
    packed = gzip.compress(corpus)
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])      # EOFError inside gzip
    (tmp_path / "plain.jsonl.gz").write_bytes(corpus[:300])                  # BadGzipFile
    (tmp_path / "quote.csv").write_text('id,text\na,"never closed\n')     # csv.Error (strict quoting)
    for name in ("cut.jsonl.gz", "plain.jsonl.gz", "quote.csv"):
        assert main(["index", str(tmp_path / name), "--out", str(tmp_path / "i"), "--quiet"]) == 2
        line = _error_line(capsys)
        assert line.startswith("retrieval index: error: ") and name in line
    assert main(["index", str(sample_dir()), "--out", str(tmp_path / "i"), "--token-pattern", "(",
                 "--allow-custom-pattern"]) == 2                               # re.error from a user's regex
    assert "'('" in _error_line(capsys) and not (tmp_path / "i").exists()


@pytest.mark.parametrize("error, expected", [
    (re.error("missing ), unterminated subpattern", pattern="(", pos=0), "bad regular expression '(': missing )"),
    (EOFError("Compressed file ended before the end-of-stream marker was reached"), "docs.jsonl.gz: truncated file"),
    (gzip.BadGzipFile("Not a gzipped file (b'ab')"), "docs.jsonl.gz: not a valid gzip file"),
    (csv.Error("field larger than field limit (131072)"), "docs.jsonl.gz: unreadable CSV/TSV (Error: field larger"),
    (LLMError("http://127.0.0.1:9/v1: HTTP 500"), "error: http://127.0.0.1:9/v1: HTTP 500"),
    (ModuleNotFoundError("No module named 'faiss'", name="faiss"), "faiss is not installed: pip install 'retrievekit[dense]'"),
])
def test_foreign_errors_from_the_library_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str], error: Exception,
                                                      expected: str) -> None:
    """The CLI's safety net: exceptions the library lets through still print one line that names the input."""
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(Retriever, "from_documents", fail)
    assert main(["index", str(tmp_path / "docs.jsonl.gz"), "--out", str(tmp_path / "i")]) == 2
    line = _error_line(capsys)
    assert line.startswith("retrieval index: error: ") and expected in line


def test_a_bug_is_one_line_or_a_traceback_with_v(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(Retriever, "from_documents", fail)
    argv = ["index", str(sample_dir()), "--out", str(tmp_path / "i")]
    assert main(argv) == 1
    line = _error_line(capsys)
    assert "unexpected TypeError: unsupported operand" in line and "run with -v for the traceback" in line
    assert main(["-v", *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "TypeError: unsupported operand" in err


def test_unreachable_llm_server_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:   # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    idx = tmp_path / "idx"
    assert main(["index", str(sample_dir()), "--out", str(idx), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), "bread", "--rerank", f"llm-yesno:http://127.0.0.1:{port}/v1#m",
                 "--rerank-option", "retries=0", "--rerank-option", "timeout=5"]) == 2
    line = _error_line(capsys)
    assert line.startswith("retrieval search: error: ") and f"127.0.0.1:{port}" in line


def test_damaged_or_missing_index_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              tiny_model_folder: Path) -> None:
    pytest.importorskip("faiss")
    idx = tmp_path / "idx"
    assert main(["index", str(sample_dir()), "--out", str(idx), "--quiet", "--method", "dense",
                 "--model", str(tiny_model_folder), "--index", "flat"]) == 0
    faiss_file = idx / "stage" / "index.faiss"
    whole = faiss_file.read_bytes()
    for damaged in (whole[: len(whole) // 3], b"\x51\xff\xdb\x92" * 16):   # truncated; not a FAISS file
        faiss_file.write_bytes(damaged)
        for argv in (["search", str(idx), "bread"], ["eval", str(sample_dir()), str(idx)]):
            capsys.readouterr()
            assert main(argv) == 2
            line = _error_line(capsys)
            assert line.startswith(f"retrieval {argv[0]}: error: ") and str(idx) in line
    assert main(["search", str(tmp_path / "missing"), "q"]) == 2
    assert f"{tmp_path / 'missing'}: no such index folder" in _error_line(capsys)
