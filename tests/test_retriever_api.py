"""The public retrieve API: argument guards, lazy hits, run() without texts, and reads safe during updates."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from retrieval import Retriever
from retrieval.docstore import DocView
from retrieval.hits import HitList
from retrieval.types import Hit

DOCS = [{"_id": f"d{i}", "title": f"title{i}", "text": f"word{i} common shared{i % 3}"} for i in range(40)]


@pytest.fixture()
def retriever() -> Retriever:
    return Retriever.from_documents(DOCS, show_progress=False)


def test_retrieve_refuses_a_list(retriever):
    with pytest.raises(TypeError, match="retrieve_batch"):
        retriever.retrieve(["a", "b"])


@pytest.mark.parametrize("query", [None, 3, b"common", ["common"]])
def test_retrieve_refuses_non_strings(retriever, query):
    with pytest.raises(TypeError, match="str"):
        retriever.retrieve(query)


@pytest.mark.parametrize("queries", [[None], ["ok", 5], [b"x"]])
def test_retrieve_batch_names_the_bad_query(retriever, queries):
    with pytest.raises(TypeError, match="query"):
        retriever.retrieve_batch(queries)


def test_retrieve_batch_reads_a_generator_once(retriever):
    results = retriever.retrieve_batch(q for q in ["word1", "word2"])
    assert [r[0].id for r in results] == ["d1", "d2"]


@pytest.mark.parametrize("k", [1.5, "10", None, True])
def test_k_must_be_an_int(retriever, k):
    with pytest.raises(TypeError, match="k must be a positive int"):
        retriever.retrieve("common", k=k)


@pytest.mark.parametrize("k", [0, -3])
def test_k_must_be_positive(retriever, k):
    with pytest.raises(ValueError, match="k must be >= 1"):
        retriever.retrieve("common", k=k)


def test_k_may_be_a_numpy_int(retriever):
    assert len(retriever.retrieve("common", k=np.int64(3))) == 3


def test_remove_refuses_one_string(retriever):
    with pytest.raises(TypeError, match="list of document ids"):
        retriever.remove("d1")


def test_hits_are_a_sequence_with_ids_and_scores(retriever):
    hits = retriever.retrieve("word7 shared1", k=5)
    assert isinstance(hits, HitList)
    assert hits.ids == [h.id for h in hits] and hits.ids[0] == "d7"
    np.testing.assert_allclose(hits.scores, [h.score for h in hits])
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0].text == "word7 common shared1" and hits[0].title == "title7"
    assert hits[:2] == list(hits)[:2]


def test_run_reads_no_text(retriever, monkeypatch):
    expected = {"q": {h.id: h.score for h in retriever.retrieve("common word3", k=10)}}
    monkeypatch.setattr(DocView, "title_text", lambda self, row: pytest.fail("run() read a text"))
    assert retriever.run({"q": "common word3"}, k=10) == expected


def test_loaded_index_reads_text_lazily(retriever, tmp_path):
    retriever.save(tmp_path / "idx")
    loaded = Retriever.load(tmp_path / "idx")
    hits = loaded.retrieve("word12", k=3)
    assert hits[0].to_dict()["text"] == "word12 common shared0"


def test_hit_text_survives_a_later_remove(retriever):
    hits = retriever.retrieve("word5", k=1)
    retriever.remove(["d0", "d1", "d2", "d3", "d4"])
    assert hits[0].id == "d5" and hits[0].text == "word5 common shared2"


def test_hand_made_hits_compare_and_replace():
    a = Hit("x", 1.0, text="t", title="T")
    b = a.replace(score=2.0)
    assert b.score == 2.0 and b.text == "t" and a.score == 1.0
    assert a == Hit("x", 1.0, text="t", title="T") and a != b
    with pytest.raises(TypeError):
        a.replace(colour="red")


def test_readers_never_see_a_wrong_document_during_updates(retriever):
    """8 reader threads retrieve while a writer adds and removes; every hit's text must be its own document's."""
    text_of = {d["_id"]: d["text"] for d in DOCS}
    extra = [{"_id": f"x{i}", "text": f"common extra{i} shared{i % 3}"} for i in range(20)]
    text_of.update({d["_id"]: d["text"] for d in extra})
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                for hits in retriever.retrieve_batch(["common", "shared1 extra3", "word9"], k=15):
                    errors.extend(f"{h.id}: {h.text!r}" for h in hits if h.text != text_of[h.id])
        except Exception as exc:  # noqa: BLE001 - any crash in a reader is a failure of the test
            errors.append(repr(exc))

    def writer() -> None:
        try:
            for round_ in range(15):
                retriever.add(extra)
                retriever.remove([d["_id"] for d in extra])
                retriever.remove([f"d{round_}"])
                retriever.add([DOCS[round_]])
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
        finally:
            stop.set()

    threads = [threading.Thread(target=reader) for _ in range(8)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(retriever) == len(DOCS)
