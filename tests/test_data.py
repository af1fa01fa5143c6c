"""Loaders: formats, BEIR folders, and clear errors naming file, line and field."""
from __future__ import annotations

import csv
import gzip
import json
import logging
import re
from pathlib import Path

import pytest

from retrieval import Retriever
from retrieval.data import DataError, iter_documents, load_beir, load_documents, load_qrels, load_queries
from retrieval.sample import sample_dir
from retrieval.types import Document


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


# --- issue #12: defects 10-14 and the data-loading hardening classes --------------------------------


def test_tsv_has_no_quoting_so_an_unbalanced_quote_merges_nothing(tmp_path: Path) -> None:
    """Defect 10: a '"' in TSV is plain text; it used to swallow the following rows into one document."""
    f = write(tmp_path / "d.tsv", 'id\ttext\n1\t"hello\n2\tworld "quoted"\n3\t"x"\n')
    docs = load_documents(f)
    assert [(d.id, d.text) for d in docs] == [("1", '"hello'), ("2", 'world "quoted"'), ("3", '"x"')]


def test_tsv_row_with_an_extra_tab_names_the_line(tmp_path: Path) -> None:
    f = write(tmp_path / "d.tsv", "id\ttext\n1\tok\n2\ttab\tinside\n")
    with pytest.raises(DataError, match=r"d.tsv, line 3: 3 columns, header has 2 .*TSV has no quoting"):
        load_documents(f)


@pytest.mark.parametrize("content, line, words", [
    ('id,text\n1,"hello\n2,world\n', 2, "never closed"),   # unbalanced quote runs to the end of the file
    ('id,text\n1,ok\n2,"a"b\n3,c\n', 3, "malformed CSV"),   # text after a closing quote
    ('id,text\n1,"x\n2,y\n3,"z\n', 4, "malformed CSV"),     # used to merge rows 1-3 silently
])
def test_csv_quote_errors_name_file_and_line(tmp_path: Path, content: str, line: int, words: str) -> None:
    f = write(tmp_path / "d.csv", content)
    with pytest.raises(DataError, match=rf"d.csv, line {line}: .*{words}"):
        load_documents(f)


def test_csv_quoted_fields_may_still_span_lines(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", 'id,text\r\n1,"two\r\nlines, ""quoted"""\r\n2,plain\r\n')
    assert [(d.id, d.text) for d in load_documents(f)] == [("1", 'two\r\nlines, "quoted"'), ("2", "plain")]


@pytest.mark.parametrize("name, sep", [("big.csv", ","), ("big.tsv", "\t"), ("big.csv.gz", ",")])
def test_fields_over_131072_characters_load(tmp_path: Path, name: str, sep: str) -> None:
    """Defect 11: a long document raised a raw _csv.Error ('field larger than field limit') naming nothing."""
    body = f"id{sep}text\n1{sep}" + "x" * 300_000 + f"\n2{sep}short\n"
    f = tmp_path / name
    f.write_bytes(gzip.compress(body.encode()) if name.endswith(".gz") else body.encode())
    docs = load_documents(f)
    assert [len(d.text) for d in docs] == [300_000, 5]
    assert csv.field_size_limit() >= 2**31 - 1


def test_csv_field_limit_is_never_lowered(tmp_path: Path) -> None:
    old = csv.field_size_limit()
    try:
        csv.field_size_limit(2**31 - 1)
        load_documents(write(tmp_path / "d.csv", "id,text\n1,x\n"))
        assert csv.field_size_limit() == 2**31 - 1
    finally:
        csv.field_size_limit(old)


def test_duplicate_header_column_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"d.csv, line 1: header names column 'text' twice"):
        load_documents(write(tmp_path / "d.csv", "id,text,text\n1,a,b\n"))


@pytest.mark.parametrize("line, field", [
    ('{"_id": "a", "text": "x\\ud800y"}', "text"),
    ('{"_id": "a", "title": "\\udfff", "text": "x"}', "title"),
    ('{"_id": "\\ud83d", "text": "x"}', "_id"),
])
def test_lone_surrogate_in_jsonl_is_refused_at_load(tmp_path: Path, line: str, field: str) -> None:
    """Defect 12: a lone surrogate loaded and indexed, then save() failed with a UnicodeEncodeError."""
    f = write(tmp_path / "c.jsonl", '{"_id": "ok", "text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"c.jsonl, line 2, field '{field}': lone surrogate U\+D"):
        load_documents(f)


def test_surrogate_pairs_are_fine(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", '{"_id": "e", "text": "smile \\ud83d\\ude00"}\n')
    assert load_documents(f)[0].text == "smile \U0001F600"


@pytest.mark.parametrize("items, where", [
    (["ok", "bad \ud800"], "document #1, field 'text'"),
    ([{"_id": "a", "text": "x"}, {"_id": "b", "text": "y", "title": "\udc80"}], "document #1, field 'title'"),
    ([Document(id="a", text="x"), Document(id="b\ud800", text="y")], "document #1 (id 'b\\ud800'), field 'id'"),
])
def test_lone_surrogate_in_python_items_names_the_item(items: list, where: str) -> None:
    with pytest.raises(DataError, match=re.escape(where) + ": lone surrogate"):
        load_documents(items)
    with pytest.raises(DataError, match="lone surrogate"):  # refused before any index (and any save) exists
        Retriever.from_documents(items, show_progress=False)


def test_lone_surrogate_in_queries_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "q.jsonl", '{"_id": "q1", "text": "ok"}\n{"_id": "q2", "text": "bad \\udc00"}\n')
    with pytest.raises(DataError, match=r"q.jsonl, line 2, field 'text': lone surrogate U\+DC00"):
        load_queries(f)


def test_nul_in_ids_is_refused(tmp_path: Path) -> None:
    """pytrec_eval cuts ids at a NUL, so 'a\\x00x' and 'a\\x00y' would be judged as the same document."""
    with pytest.raises(DataError, match=r"c.jsonl, line 1, field '_id': id .* contains a NUL"):
        load_documents(write(tmp_path / "c.jsonl", '{"_id": "a\\u0000x", "text": "t"}\n'))
    with pytest.raises(DataError, match=r"q.tsv, line 1, field 'corpus-id'"):
        load_qrels(write(tmp_path / "q.tsv", "q1\ta\x00x\t1\n"))


def test_queries_tsv_with_a_second_tab_is_an_error(tmp_path: Path) -> None:
    """Defect 13: text after a second tab was dropped silently; now the line is named (TSV cannot quote a tab)."""
    f = write(tmp_path / "q.tsv", "1\twhat is bm25\n2\twhat is\tsplade\n")
    with pytest.raises(DataError, match=r"q.tsv, line 2: expected 'id<TAB>text', got 3 tab-separated fields"):
        load_queries(f)
    with pytest.raises(DataError, match=r"q2.tsv, line 1: missing or empty query id"):
        load_queries(write(tmp_path / "q2.tsv", "\ttext\n"))


def _gz(tmp_path: Path, name: str, data: bytes) -> Path:
    return write(tmp_path / name, data)


GZ_DATA = gzip.compress(b"".join(b'{"_id": "d%d", "text": "text number %d"}\n' % (i, i) for i in range(200)))


@pytest.mark.parametrize("data, words", [
    (GZ_DATA[: len(GZ_DATA) // 2], "gzip file is truncated"),                      # EOFError
    (b"this is not gzip data\n", "not a valid gzip file"),                          # BadGzipFile
    (GZ_DATA[:20] + bytes([GZ_DATA[20] ^ 0xFF]) + GZ_DATA[21:], "gzip data is damaged"),  # zlib.error
    (GZ_DATA[:-8] + b"\0\0\0\0" + GZ_DATA[-4:], "CRC check failed"),                 # BadGzipFile at the end
], ids=["truncated", "not-gzip", "flipped-byte", "bad-crc"])
def test_gzip_errors_name_the_file(tmp_path: Path, data: bytes, words: str) -> None:
    f = _gz(tmp_path, "c.jsonl.gz", data)
    with pytest.raises(DataError, match=rf"c.jsonl.gz: .*{words}.*; \d+ lines were read before it"):
        load_documents(f)


def test_gzip_errors_name_the_file_for_queries_and_qrels(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="q.tsv.gz: not a valid gzip file"):
        load_qrels(_gz(tmp_path, "q.tsv.gz", b"q1 d1 1\n"))
    with pytest.raises(DataError, match="q.jsonl.gz: gzip file is truncated"):
        load_queries(_gz(tmp_path, "q.jsonl.gz", gzip.compress(b'{"_id": "q", "text": "x"}\n')[:15]))


def test_repeated_queries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "q.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{"_id": "a", "text": "x"}\n')
    with caplog.at_level(logging.WARNING, logger="retrieval.data"):
        assert load_queries(f) == {"a": "x", "b": "y"}
    assert "1 repeated queries (same id and text) were kept once" in caplog.text
    f = write(tmp_path / "q2.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{"_id": "a", "text": "z"}\n')
    with pytest.raises(DataError, match=r"q2.jsonl, line 3: query id 'a' repeats line 1 with different text"):
        load_queries(f)
    with pytest.raises(DataError, match=r"q3.tsv, line 2: query id '7' repeats line 1"):
        load_queries(write(tmp_path / "q3.tsv", "7\tone\n7\ttwo\n"))


def test_repeated_and_conflicting_judgments(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "r.tsv", "query-id\tcorpus-id\tscore\nq\td1\t1\nq\td2\t0\nq\td1\t1\n")
    with caplog.at_level(logging.WARNING, logger="retrieval.data"):
        assert load_qrels(f) == {"q": {"d1": 1, "d2": 0}}
    assert "1 repeated judgments (same query, document and grade) were kept once" in caplog.text
    f = write(tmp_path / "c.tsv", "q 0 d1 1\nq 0 d2 0\nq 0 d1 2\n")
    with pytest.raises(DataError, match=r"c.tsv, line 3: query 'q', document 'd1' is graded 2 here but 1 at line 1"):
        load_qrels(f)


@pytest.mark.parametrize("content, words", [
    ("q d 1 2 3\n", "line 1: expected 'query-id corpus-id score'.*got 5 fields"),
    ("q d 1\nq d2\n", "line 2: expected .*got 2 fields"),
    ("q d 1\nq e 99999999999\n", "line 2, field 'score': relevance grade 99999999999 is out of range"),
    ("q d 1\nq e 1.5\n", "line 2, field 'score': relevance grade '1.5' is not an integer"),
    ("q d 1.5\nq e 1\n", "line 1, field 'score': relevance grade '1.5' is not an integer"),  # no header: a number
    ("q d 1\nq e nan\n", "line 2, field 'score': relevance grade 'nan' is not an integer"),
    ("q d 1\nq e 1e99\n", "line 2, field 'score': relevance grade 1e99 is out of range"),
])
def test_qrels_malformed_lines_are_named(tmp_path: Path, content: str, words: str) -> None:
    with pytest.raises(DataError, match=rf"q.tsv, {words}"):
        load_qrels(write(tmp_path / "q.tsv", content))


def test_qrels_integral_float_grades_are_read_as_ints(tmp_path: Path) -> None:
    """pandas writes an int column holding a gap as floats ('1.0'): the same grades, not a header or an error."""
    qrels = load_qrels(write(tmp_path / "q.tsv", "q1\td1\t1.0\nq1\td2\t0.0\nq2\td1\t-1.0\nq2\td3\t2\n"))
    assert qrels == {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": -1, "d3": 2}}
    assert all(type(g) is int for docs in qrels.values() for g in docs.values())
    with_header = load_qrels(write(tmp_path / "h.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2.0\n"))
    assert with_header == {"q1": {"d1": 2}}


def _beir(tmp_path: Path, qrels: str, queries: str = '{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "b"}\n') -> Path:
    write(tmp_path / "corpus.jsonl", '{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": "y"}\n')
    write(tmp_path / "queries.jsonl", queries)
    (tmp_path / "qrels").mkdir(exist_ok=True)
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n" + qrels)
    return tmp_path


def test_load_beir_counts_judgments_naming_unknown_documents(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _beir(tmp_path, "q1\td1\t1\nq1\tgone\t1\nq2\tgone\t2\nq2\tother\t0\n")
    data = load_beir(folder)
    assert data.issues.unknown_documents is None  # the corpus has not been read yet: load_beir stays cheap
    with caplog.at_level(logging.WARNING, logger="retrieval.data"):
        assert [d.id for d in data.corpus()] == ["d1", "d2"]
        list(data.corpus())
    assert data.issues.unknown_documents == 3
    assert data.issues.unknown_document_examples == ("gone", "other")
    assert caplog.text.count("3 judgments name 2 documents not in corpus.jsonl") == 1  # logged once
    checked = load_beir(folder, check_corpus=True)
    assert checked.issues.unknown_documents == 3
    assert checked.qrels == data.qrels  # kept, as BEIR keeps them


def test_load_beir_counts_repeats(tmp_path: Path) -> None:
    queries = '{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "b"}\n'
    folder = _beir(tmp_path, "q1\td1\t1\nq1\td1\t1\nq2\td2\t1\n", queries)
    data = load_beir(folder, check_corpus=True)
    assert (data.issues.repeated_queries, data.issues.repeated_judgments, data.issues.unknown_documents) == (1, 1, 0)


def test_corpus_method_passed_without_calling_it() -> None:
    data = load_beir(sample_dir())
    with pytest.raises(TypeError, match=r"got the callable 'corpus' itself.*call it: \.corpus\(\)"):
        Retriever.from_documents(data.corpus, show_progress=False)
    with pytest.raises(TypeError, match=r"call it: \.corpus\(\)"):
        list(iter_documents(data.corpus))


@pytest.mark.parametrize("source, words", [
    (None, "expected a path or an iterable of str/dict/Document, got NoneType"),
    (5, "got int"),
    (b'{"_id": "a"}', "got bytes; pass a file path"),
])
def test_sources_that_are_not_collections(source, words: str) -> None:
    with pytest.raises(TypeError, match=words):
        load_documents(source)


@pytest.mark.parametrize("item, words", [
    (None, "got NoneType"),
    (7, "got int"),
    (b"text", "got bytes; decode bytes to str first"),
    (["a", "b"], "got list; pass each document as a dict"),
    (("id", "text"), "got tuple"),
    ({"_id": True, "text": "x"}, "field '_id': document id must be a string or integer, got bool"),
    ({"_id": ["a"], "text": "x"}, "document id must be a string or integer, got list"),
    (Document(id=3, text="x"), "field 'id': document id must be a non-empty string, got 3"),  # type: ignore[arg-type]
    (Document(id="a", text=None), "field 'text': text must be a string, got NoneType"),  # type: ignore[arg-type]
])
def test_unsupported_items_name_their_index(item, words: str) -> None:
    with pytest.raises(DataError, match=rf"document #1\b.*{words}"):
        load_documents(["fine", item])


def test_sample_and_path_like_sources_still_load() -> None:
    assert len(load_documents(sample_dir())) == 80
    data = load_beir(sample_dir())
    assert len(list(data.corpus())) == 80 and data.issues.unknown_documents == 0
