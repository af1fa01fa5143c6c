"""Loaders: formats, BEIR folders, and clear errors naming file, line and field."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from retrieval.data import DataError, iter_documents, load_beir, load_documents, load_qrels, load_queries
from retrieval.sample import sample_dir


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_jsonl_beir_keys_title_and_text(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", '{"_id": "a", "title": "T", "text": "body"}\n\n{"_id": 7, "text": "x"}\n')
    docs = load_documents(f)
    assert [(d.id, d.title, d.text) for d in docs] == [("a", "T", "body"), ("7", "", "x")]
    assert docs[0].full_text == "T body"


def test_gzip_and_custom_fields(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl.gz"
    with gzip.open(f, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"pid": "p1", "body": "hello"}) + "\n")
    docs = load_documents(f, id_field="pid", text_field="body", title_field=None)
    assert docs[0].id == "p1" and docs[0].text == "hello"


def test_csv_and_tsv(tmp_path: Path) -> None:
    csv_f = write(tmp_path / "d.csv", 'id,title,text\n1,A,"multi\nline, text"\n2,B,plain\n')
    assert [d.text for d in load_documents(csv_f)] == ["multi\nline, text", "plain"]
    tsv_f = write(tmp_path / "d.tsv", "id\ttext\nx\thello world\n")
    assert load_documents(tsv_f)[0].text == "hello world"


def test_iterables_of_strings_dicts_and_documents() -> None:
    docs = load_documents(["first", "second"])
    assert [d.id for d in docs] == ["0", "1"]
    docs = load_documents([{"id": "x", "text": "t", "title": "h"}])
    assert docs[0].title == "h"


def test_empty_texts_are_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "c.jsonl", '{"_id": "a", "text": ""}\n{"_id": "b", "text": "x"}\n')
    with caplog.at_level("WARNING"):
        docs = load_documents(f)
    assert len(docs) == 2
    assert "1 of 2 documents have empty text" in caplog.text


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', "line 2: malformed JSON"),
        ('{"_id": "a", "title": "no text"}\n', "line 1, field 'text': missing document text"),
        ('{"title": "t", "text": "x"}\n', "line 1: no id field"),
        ('{"_id": "", "text": "x"}\n', "field '_id': missing or empty document id"),
        ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "line 2: duplicate document id 'a' (first seen at line 1)"),
        ('{"_id": "a", "text": 5}\n', "field 'text': text must be a string"),
        ("[1, 2]\n", "line 1: expected a JSON object"),
        ("", "file is empty"),
        ("\n\n", "file has no records"),
    ],
)
def test_jsonl_errors_name_file_line_field(tmp_path: Path, content: str, message: str) -> None:
    f = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataError) as err:
        load_documents(f)
    assert message in str(err.value)
    assert str(f) in str(err.value)


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    f = write(tmp_path / "bad.jsonl", b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: not valid UTF-8"):
        load_documents(f)


def test_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"line 3: 2 columns, header has 3"):
        load_documents(write(tmp_path / "d.csv", "id,title,text\n1,a,b\n2,c\n"))
    with pytest.raises(DataError, match="header but no rows"):
        load_documents(write(tmp_path / "e.csv", "id,text\n"))


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot tell the format"):
        load_documents(write(tmp_path / "d.xml", "<x/>"))
    with pytest.raises(DataError, match="no such file"):
        load_documents(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="expected str, dict or Document"):
        load_documents([3.5])


def test_streaming_is_lazy(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n')
    it = iter_documents(f)
    assert next(it).id == "a"  # the bad second line is not read yet
    with pytest.raises(DataError):
        next(it)


def test_load_beir_sample_filters_queries_to_split() -> None:
    data = load_beir(sample_dir(), "test")
    assert len(data.queries) == 24 and set(data.queries) == set(data.qrels)
    docs = list(data.corpus())
    assert len(docs) == 80
    assert sum(1 for d in docs if not d.text) == 2


def test_load_beir_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing corpus.jsonl"):
        load_beir(tmp_path)
    write(tmp_path / "corpus.jsonl", '{"_id": "d", "text": "x"}\n')
    write(tmp_path / "queries.jsonl", '{"_id": "q", "text": "x"}\n')
    (tmp_path / "qrels").mkdir()
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq\td\t1\nq2\td\t1\n")
    with pytest.raises(DataError, match="no such split; available: \\['test'\\]"):
        load_beir(tmp_path, "dev")
    with pytest.raises(DataError, match="1 judged queries have no text"):
        load_beir(tmp_path, "test")


def test_qrels_and_queries_formats(tmp_path: Path) -> None:
    assert load_qrels(write(tmp_path / "q.tsv", "q1 0 d1 2\nq1 0 d2 0\n")) == {"q1": {"d1": 2, "d2": 0}}
    with pytest.raises(DataError, match="line 2, field 'score'"):
        load_qrels(write(tmp_path / "b.tsv", "query-id\tcorpus-id\tscore\nq\td\thigh\n"))
    assert load_queries(write(tmp_path / "q.tsv", "1\twhat is bm25\n")) == {"1": "what is bm25"}
