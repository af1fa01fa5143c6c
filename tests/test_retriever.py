"""The one-call API: build, retrieve, save/load round trip, add/remove, format versions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval import Document, Hit, IndexFormatError, Retriever
from retrieval.data import DataError, load_beir
from retrieval.sample import sample_dir

DOCS = [
    {"_id": "a", "title": "Cats", "text": "Cats are small domesticated felines that purr."},
    {"_id": "b", "title": "Dogs", "text": "Dogs are loyal domesticated canines that bark."},
    {"_id": "c", "title": "", "text": ""},
    {"_id": "d", "title": "Lions", "text": "Lions are large wild felines living in prides."},
]


def test_retrieve_returns_ranked_hits_with_text() -> None:
    r = Retriever.from_documents(DOCS, show_progress=False)
    hits = r.retrieve("wild felines", k=2)
    assert [h.id for h in hits] == ["d", "a"]
    assert [h.rank for h in hits] == [1, 2]
    assert hits[0].text.startswith("Lions are") and hits[0].title == "Lions"
    assert hits[0].score > hits[1].score > 0
    assert len(r) == 4  # the empty document is kept


def test_retrieve_batch_and_run_shape() -> None:
    r = Retriever.from_documents(DOCS, show_progress=False)
    batch = r.retrieve_batch(["bark", "purr", "nothing matches xyz"], k=3)
    assert [[h.id for h in hits] for hits in batch] == [["b"], ["a"], []]
    assert r.run({"q1": "felines"}, k=10) == {"q1": {h.id: h.score for h in r.retrieve("felines", 10)}}
    with pytest.raises(TypeError, match="use retrieve\\(\\) for one"):
        r.retrieve_batch("a single string")
    with pytest.raises(TypeError, match="retrieve_batch takes a list of str, got dict"):   # its keys were searched
        r.retrieve_batch({"q1": "felines"})
    with pytest.raises(TypeError, match="retrieve_batch: query 1 is a int, not a str"):
        r.retrieve_batch(["cats", 5])
    with pytest.raises(ValueError, match="k must be >= 1"):
        r.retrieve("cats", k=0)


def test_save_load_round_trip_gives_same_results(tmp_path: Path) -> None:
    data = load_beir(sample_dir())
    r = Retriever.from_documents(data.corpus(), show_progress=False, variant="okapi", k1=1.2)
    before = r.run(data.queries, k=10)
    r.save(tmp_path / "idx")
    loaded = Retriever.load(tmp_path / "idx")
    assert loaded.run(data.queries, k=10) == before
    assert [h.to_dict() for h in loaded.retrieve("bread yeast")] == [h.to_dict() for h in r.retrieve("bread yeast")]
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["method"] == "bm25" and manifest["n_docs"] == 80
    assert manifest["stage"]["bm25"]["variant"] == "okapi" and manifest["stage"]["tokenizer"]["stemmer"] == "english"
    assert "library_version" in manifest
    assert not any(p.suffix in (".pkl", ".pickle") for p in (tmp_path / "idx").rglob("*"))


def test_save_is_atomic_and_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = Retriever.from_documents(DOCS, show_progress=False)
    r.save(tmp_path / "idx")
    r2 = Retriever.from_documents(DOCS[:2], show_progress=False)

    def boom(folder: Path) -> dict:
        raise OSError("disk full")

    monkeypatch.setattr(r2.searcher, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        r2.save(tmp_path / "idx")
    assert len(Retriever.load(tmp_path / "idx")) == 4  # old index intact
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temp folder left
    monkeypatch.undo()
    r2.save(tmp_path / "idx")
    assert len(Retriever.load(tmp_path / "idx")) == 2


def test_newer_format_and_damaged_folders_fail_clearly(tmp_path: Path) -> None:
    Retriever.from_documents(DOCS, show_progress=False).save(tmp_path / "idx")
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="format version 99.*reads up to version 2. Upgrade"):
        Retriever.load(tmp_path / "idx")
    with pytest.raises(IndexFormatError, match="no such index folder"):
        Retriever.load(tmp_path / "nope")
    manifest["format_version"] = 1
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "idx" / "stage" / "tf_data.npy").unlink()
    with pytest.raises(IndexFormatError, match="tf_data.npy: missing"):
        Retriever.load(tmp_path / "idx")


def test_add_and_remove_documents(tmp_path: Path) -> None:
    r = Retriever.from_documents(DOCS[:2], show_progress=False)
    r.add([Document(id="d", title="Lions", text="Lions are large wild felines.")])
    assert r.retrieve("lions", k=1)[0].id == "d"
    with pytest.raises(DataError, match="already in the index"):
        r.add([{"_id": "a", "text": "dup"}])
    assert len(r) == 3
    r.remove(["a"])
    assert [h.id for h in r.retrieve("domesticated", k=5)] == ["b"]
    with pytest.raises(KeyError, match="unknown document ids"):
        r.remove(["zzz"])
    r.save(tmp_path / "i")
    loaded = Retriever.load(tmp_path / "i")
    loaded.add([{"_id": "e", "text": "Eagles are birds of prey."}])
    loaded.remove(["b"])
    assert sorted(h.id for h in loaded.retrieve("lions eagles birds", k=5)) == ["d", "e"]
    assert loaded.docs[0].id == "d" and loaded.docs[1].id == "e"


@pytest.mark.parametrize("method", ["bm25", "dense"])
def test_remove_matches_integer_ids_as_indexed_and_removes_a_repeat_once(method: str) -> None:
    """``{"_id": 7}`` is indexed as "7": remove([7]) must find it (it raised KeyError), and [7, "7"] is one id."""
    import numpy as np
    from helpers.fake_encoders import HashEncoder

    docs = [{"_id": 7, "text": "cats purr"}, {"_id": "8", "text": "dogs bark"}, {"_id": 9, "text": "cows moo"}]
    r = Retriever.from_documents(docs, method=method, show_progress=False,
                                 **({"encoder": HashEncoder()} if method == "dense" else {}))
    r.remove([7, "7"])
    r.remove(iter([np.int64(9)]))
    assert len(r) == 1 and [h.id for h in r.retrieve("cats dogs cows", k=3)] == ["8"]
    with pytest.raises(KeyError, match="unknown document ids"):
        r.remove(["8", "7"])
    assert len(r) == 1                                     # nothing removed when one id is unknown


@pytest.mark.parametrize("ids, words", [("8", "not one string|got str"), (b"8", "got bytes"), (8, "got int"),
                                        ([8.0], "id 0 is a float"), ([True], "id 0 is a bool")])
def test_remove_names_what_is_not_a_list_of_ids(ids, words) -> None:
    r = Retriever.from_documents(DOCS, show_progress=False)
    with pytest.raises(TypeError, match=words):
        r.remove(ids)
    assert len(r) == 4


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        Retriever.from_documents(DOCS, method="magic")


class ReverseReranker:
    def rerank(self, query: str, hits):
        return list(reversed(hits))


def test_reranker_sees_depth_candidates_and_ranks_are_reassigned() -> None:
    r = Retriever.from_documents(DOCS, show_progress=False, reranker=ReverseReranker(), rerank_depth=3)
    first_stage = Retriever.from_documents(DOCS, show_progress=False).retrieve("domesticated felines", k=3)
    assert len(first_stage) == 3
    hits = r.retrieve("domesticated felines", k=1)
    assert [(h.id, h.rank) for h in hits] == [(first_stage[-1].id, 1)]


class _Bad:
    def __init__(self, make) -> None:
        self.make = make

    def rerank(self, query: str, hits):
        return self.make(hits)


@pytest.mark.parametrize("make, error, words", [
    (lambda hits: hits + hits[:1], ValueError, r"_Bad returned document '\w' twice"),
    (lambda hits: [Hit("zzz", 1.0)] + hits, ValueError, "document 'zzz', which was not among its candidates"),
    (lambda hits: [h.id for h in hits], TypeError, "returned str at position 0, not a Hit"),
    (lambda hits: None, TypeError, "returned NoneType, not a list of hits"),
])
def test_a_reranker_that_would_corrupt_the_ranking_is_named(make, error, words) -> None:
    r = Retriever.from_documents(DOCS, show_progress=False, reranker=_Bad(make))
    with pytest.raises(error, match=words):
        r.retrieve("felines", k=2)


def test_a_reranker_may_drop_candidates() -> None:
    r = Retriever.from_documents(DOCS, show_progress=False, reranker=_Bad(lambda hits: hits[1:]))
    hits = r.retrieve("domesticated felines", k=3)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1)) and len(hits) >= 1


def test_reranker_may_be_a_spec_string(tmp_path: Path) -> None:
    """``reranker="KIND:MODEL"`` is built by load_reranker (an HTTP spec: nothing is contacted until a query)."""
    from retrieval.rerank.llm.pointwise import YesNoReranker

    spec = "llm-yesno:http://127.0.0.1:9/v1#m"
    r = Retriever.from_documents(DOCS, show_progress=False, reranker=spec)
    assert isinstance(r.reranker, YesNoReranker) and r.reranker.backend.base_url == "http://127.0.0.1:9/v1"
    r.save(tmp_path / "idx")
    assert isinstance(Retriever.load(tmp_path / "idx", reranker=spec).reranker, YesNoReranker)


@pytest.mark.parametrize("bad, error, words", [
    ("no-such-kind:x", ValueError, "unknown reranker 'no-such-kind'"),
    (42, TypeError, "reranker must have a rerank"),
    (object(), TypeError, "spec string"),
])
def test_a_bad_reranker_is_refused_before_indexing(tmp_path: Path, monkeypatch, bad, error, words) -> None:
    import retrieval.retriever as module

    monkeypatch.setattr(module, "iter_documents", lambda docs: pytest.fail("indexed before the reranker was checked"))
    with pytest.raises(error, match=words):
        Retriever.from_documents(DOCS, show_progress=False, reranker=bad)
    with pytest.raises(error, match=words):
        Retriever.load(tmp_path / "not-read", reranker=bad)


def test_a_bad_rerank_depth_is_refused_before_indexing(monkeypatch) -> None:
    import retrieval.retriever as module

    monkeypatch.setattr(module, "iter_documents", lambda docs: pytest.fail("indexed before rerank_depth was checked"))
    with pytest.raises(ValueError, match="rerank_depth must be >= 1"):
        Retriever.from_documents(DOCS, show_progress=False, reranker=ReverseReranker(), rerank_depth=0)
    with pytest.raises(ValueError, match="rerank_depth must be >= 1"):     # not an error about the missing folder
        Retriever.load("/no/such/index", reranker=ReverseReranker(), rerank_depth=0)


def _edit_stage(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest["stage"])
    path.write_text(json.dumps(manifest))


def test_a_manifest_cannot_choose_a_backtracking_token_pattern(tmp_path: Path) -> None:
    """Issue 12-5: ``(\\w+\\s?)+$`` took exponential time per query; loading it is refused before any matching."""
    import subprocess
    import sys
    import textwrap

    Retriever.from_documents(DOCS, show_progress=False).save(tmp_path / "idx")
    _edit_stage(tmp_path / "idx", lambda stage: stage["tokenizer"].update(token_pattern=r"(\w+\s?)+$"))
    code = textwrap.dedent(f"""
        from retrieval import IndexFormatError, Retriever
        try:
            Retriever.load({str(tmp_path / "idx")!r}).retrieve("a" * 40 + "!")   # 2^40 ways to split
        except IndexFormatError as exc:
            print("refused:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.startswith("refused:") and "manifest.json" in out and "allow_custom_pattern" in out


def test_a_custom_token_pattern_round_trips_with_the_opt_in(tmp_path: Path) -> None:
    from retrieval.sparse.tokenize import TokenizerConfig

    custom = TokenizerConfig(token_pattern=r"[a-z]{3,}", stemmer=None)
    r = Retriever.from_documents(DOCS, tokenizer=custom, allow_custom_pattern=True, show_progress=False)
    r.save(tmp_path / "idx")
    with pytest.raises(IndexFormatError, match=r"idx/manifest.json: token_pattern '\[a-z\]\{3,\}'"):
        Retriever.load(tmp_path / "idx")
    loaded = Retriever.load(tmp_path / "idx", allow_custom_pattern=True)
    assert [h.id for h in loaded.retrieve("wild felines")] == [h.id for h in r.retrieve("wild felines")]


def test_old_manifests_with_the_bm25_backend_key_still_load(tmp_path: Path) -> None:
    Retriever.from_documents(DOCS, variant="okapi", show_progress=False).save(tmp_path / "idx")

    def to_old_format(stage: dict) -> None:   # what releases before the rename wrote
        stage["backend"] = stage["bm25"].pop("implementation")

    _edit_stage(tmp_path / "idx", to_old_format)
    assert Retriever.load(tmp_path / "idx").searcher.config.implementation == "native"
    _edit_stage(tmp_path / "idx", lambda stage: stage.update(backend="rank_bm25"))
    loaded = Retriever.load(tmp_path / "idx")
    assert loaded.searcher.config.implementation == "rank_bm25" and loaded.retrieve("purr", k=1)[0].id == "a"
    _edit_stage(tmp_path / "idx", lambda stage: stage["tokenizer"].update(casefold=True))
    with pytest.raises(IndexFormatError, match=r"manifest.json: bad BM25 stage config.*TokenizerConfig: unknown key"):
        Retriever.load(tmp_path / "idx")
