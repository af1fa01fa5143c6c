"""BM25 scoring: exact equality with rank-bm25 on real text, variants, tokenizer, add/remove."""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from retrieval.sparse.searcher import BM25Searcher
from retrieval.sparse.scoring import BM25Config, BM25Index, idf
from retrieval.sparse.tokenize import Tokenizer, TokenizerConfig
from retrieval.types import Document

QUERIES = [
    "vitamin D deficiency increases mortality",
    "microRNA regulates tumor growth in mice",
    "the the of and",  # stopword-only in the default tokenizer; common words for rank-bm25
    "zebrafish",
    "",
]


def test_okapi_equals_rank_bm25_on_real_text(scifact_docs) -> None:
    from rank_bm25 import BM25Okapi

    tok = Tokenizer(TokenizerConfig.preset("plain"))
    corpus = [tok(d.full_text) for d in scifact_docs]
    reference = BM25Okapi(corpus)
    for dtype, tol in (("float64", 1e-9), ("float32", 1e-6)):
        index = BM25Index.build(corpus, BM25Config(variant="okapi", dtype=dtype))
        ours = index.scores([tok(q) for q in QUERIES])
        for q, row in zip(QUERIES, ours):
            expected = reference.get_scores(tok(q))
            np.testing.assert_allclose(row, expected, rtol=tol, atol=tol, err_msg=f"{dtype} {q!r}")


def test_score_rows_scores_any_document_as_search_does(scifact_docs) -> None:
    """A document outside the top-k gets the score search would give it; both implementations agree."""
    okapi = BM25Config(variant="okapi")
    native = BM25Searcher.build(scifact_docs, show_progress=False, tokenizer="plain", config=okapi)
    ref = BM25Searcher.build(scifact_docs, show_progress=False, tokenizer="plain",
                             config=okapi.with_options(implementation="rank_bm25"))
    rows, scores = native.search([QUERIES[0]], len(scifact_docs))[0]
    deep = [int(rows[-1]), int(rows[len(rows) // 2]), int(rows[0])]
    np.testing.assert_array_equal(native.score_rows(QUERIES[0], deep), scores[[len(rows) - 1, len(rows) // 2, 0]])
    unmatched = next(r for r in range(len(scifact_docs)) if r not in set(rows.tolist()))
    assert native.score_rows(QUERIES[0], [unmatched]).tolist() == [0.0]
    np.testing.assert_allclose(ref.score_rows(QUERIES[0], deep + [unmatched]),
                               native.score_rows(QUERIES[0], deep + [unmatched]), rtol=1e-6)
    with pytest.raises(IndexError, match="out of range"):
        native.score_rows(QUERIES[0], [len(scifact_docs)])


def test_rank_bm25_implementation_matches_native_ranking(scifact_docs) -> None:
    okapi = BM25Config(variant="okapi")
    native = BM25Searcher.build(scifact_docs, show_progress=False, tokenizer="plain", config=okapi)
    ref = BM25Searcher.build(scifact_docs, show_progress=False, tokenizer="plain",
                             config=okapi.with_options(implementation="rank_bm25"))
    for (r1, s1), (r2, s2) in zip(native.search(QUERIES[:2], 20), ref.search(QUERIES[:2], 20)):
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_allclose(s1, s2, rtol=1e-6)
    with pytest.raises(ValueError, match="variant='okapi' only"):
        BM25Config(implementation="rank_bm25")


def test_lucene_score_by_hand() -> None:
    # 3 docs; "cat" in docs 0 and 2. Lucene: idf = ln(1 + (N - df + .5)/(df + .5)); tf/(tf + k1(1 - b + b dl/avgdl)).
    docs = [["cat", "sat"], ["dog"], ["cat", "cat", "dog", "cow"]]
    index = BM25Index.build(docs, BM25Config(variant="lucene", k1=1.2, b=0.75, dtype="float64"))
    avgdl = 7 / 3
    w = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    expected0 = w * 1 / (1 + 1.2 * (0.25 + 0.75 * 2 / avgdl))
    expected2 = w * 2 / (2 + 1.2 * (0.25 + 0.75 * 4 / avgdl))
    np.testing.assert_allclose(index.scores([["cat"]])[0], [expected0, 0.0, expected2], rtol=1e-12)
    # A repeated query term counts twice, as in Lucene, rank-bm25 and bm25s.
    np.testing.assert_allclose(index.scores([["cat", "cat"]])[0], 2 * index.scores([["cat"]])[0])


def test_idf_variants_and_okapi_floor() -> None:
    df = np.array([1, 3, 4])
    okapi = idf(df, 4, BM25Config(variant="okapi", epsilon=0.25))
    raw = np.log(4 - df + 0.5) - np.log(df + 0.5)
    assert okapi[0] == pytest.approx(raw[0])
    assert okapi[2] == pytest.approx(0.25 * raw.mean())  # negative idf floored at eps * mean idf
    assert np.all(idf(df, 4, BM25Config(variant="lucene")) > 0)
    with pytest.raises(ValueError, match="unknown BM25 variant"):
        BM25Config(variant="bm99")


def test_search_topk_order_and_ties() -> None:
    index = BM25Index.build([["a"], ["a"], ["b"], ["a", "b"]])
    rows, scores = index.search([["a"]], k=2)[0]
    assert len(rows) == 2 and scores[0] >= scores[1]
    rows, _ = index.search([["zzz"]], k=5)[0]
    assert len(rows) == 0  # no shared term, no hit
    rows_all, _ = index.search([["a"]], k=10)[0]
    assert sorted(rows_all.tolist()) == [0, 1, 3]
    assert rows_all.tolist()[:2] == [0, 1]  # equal scores: lower row first


def test_batched_search_equals_one_by_one(scifact_docs) -> None:
    s = BM25Searcher.build(scifact_docs, show_progress=False)
    queries = [d.title for d in scifact_docs[:40]]
    batch = BM25Searcher(s.index, s.tokenizer, n_jobs=2).search(queries, 10)
    for q, (rows, scores) in zip(queries, batch):
        r1, s1 = s.search([q], 10)[0]
        np.testing.assert_array_equal(rows, r1)
        np.testing.assert_allclose(scores, s1)


def test_add_and_remove_equal_a_fresh_build() -> None:
    docs = [["apple", "pie"], ["banana"], ["apple", "tart"], ["cherry", "pie"]]
    full = BM25Index.build(docs)
    grown = BM25Index.build(docs[:2])
    grown.add(docs[2:])
    np.testing.assert_array_equal(grown.scores([["apple", "pie"]]), full.scores([["apple", "pie"]]))
    full.remove([1])
    fresh = BM25Index.build([docs[0], docs[2], docs[3]])
    np.testing.assert_array_equal(full.scores([["pie", "tart"]]), fresh.scores([["pie", "tart"]]))


def test_tokenizer_presets() -> None:
    tok = Tokenizer()
    assert tok("The Runners were RUNNING quickly, a b") == ["runner", "were", "run", "quick"]  # bm25s list keeps "were"
    plain = Tokenizer(TokenizerConfig.preset("plain"))
    assert plain("The Runners, a b") == ["the", "runners", "a", "b"]
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        TokenizerConfig.preset("klingon")
    with pytest.raises(ValueError, match="unknown stemmer"):
        Tokenizer(TokenizerConfig(stemmer="klingon"))("word")


def test_custom_token_patterns_need_an_opt_in() -> None:
    custom = TokenizerConfig(token_pattern=r"[a-z]+")
    with pytest.raises(ValueError, match="allow_custom_pattern=True"):
        Tokenizer(custom)
    assert Tokenizer(custom, allow_custom_pattern=True)("Ab1cd") == ["ab", "cd"]
    with pytest.raises(ValueError, match="not a valid regex"):
        Tokenizer(TokenizerConfig(token_pattern="(unclosed"), allow_custom_pattern=True)
    docs = [Document("a", "x1y")]
    with pytest.raises(ValueError, match="allow_custom_pattern"):
        BM25Searcher.build(docs, show_progress=False, tokenizer=custom)
    searcher = BM25Searcher.build(docs, show_progress=False, tokenizer=custom, allow_custom_pattern=True)
    assert searcher.index.vocab_list() == ["x", "y"]
    for name in ("default", "plain", "nostem"):   # every preset is accepted without the opt-in
        Tokenizer(TokenizerConfig.preset(name))


def test_configs_reject_unknown_keys_and_read_old_names() -> None:
    with pytest.raises(ValueError, match=r"TokenizerConfig: unknown key\(s\) \['lowercse'\]; valid keys: lowercase"):
        TokenizerConfig.from_dict({"lowercse": False})
    assert TokenizerConfig.from_dict(TokenizerConfig.preset("plain").to_dict()) == TokenizerConfig.preset("plain")
    with pytest.raises(ValueError, match="BM25Config: unknown key"):
        BM25Config.from_dict({"k": 1.0})
    old = BM25Config.from_dict({"variant": "okapi", "backend": "rank_bm25"})   # the name before "implementation"
    assert old.implementation == "rank_bm25"
    with pytest.raises(ValueError, match="BM25Config.k1 must be int or float"):
        BM25Config(k1="1.2")   # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown BM25 implementation"):
        BM25Config(implementation="onnx")


WORDS = ["apple", "pie", "banana", "tart", "cherry", "plum", "jam"]


@pytest.mark.parametrize("variant", ["lucene", "okapi"])
@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "remove", "search"]),
                          st.lists(st.lists(st.sampled_from(WORDS), max_size=6), min_size=1, max_size=4),
                          st.lists(st.integers(0, 30), max_size=3)), max_size=12))
@example(ops=[("add", [[], [], []], []), ("remove", [[]], [0]), ("add", [[], [], ["apple"] * 3 + ["banana"]], []),
          ("add", [["banana", "banana", "tart"], ["apple"] * 3 + ["pie", "banana", "tart"]], []),
          ("add", [[], ["apple"] * 3 + ["pie", "banana", "cherry"], ["banana"]], [])])   # a tie CI once split
def test_any_sequence_of_updates_scores_exactly_as_a_fresh_build(ops, variant: str) -> None:
    """Queued segments and removal marks, merged at any point, score bit for bit as a fresh build, so ties too
    rank in the same order (a fresh build numbers the terms differently; queries sum in their own term order)."""
    docs = [["apple", "pie"], ["banana"], ["cherry", "pie", "pie"]]
    config = BM25Config(variant=variant)
    index = BM25Index.build(docs, config)
    index.MERGE_RATIO = 1      # merge segments (dropping dead rows) as well as keep several
    for op, new, rows in ops:
        if op == "add":
            index.add(new)
            docs = docs + new
        elif op == "remove":
            rows = sorted({r for r in rows if r < len(docs)})
            index.remove(rows)
            docs = [d for i, d in enumerate(docs) if i not in set(rows)]
        else:
            index.search([["pie"]], 3)          # a search in between merges what is queued
        assert index.n_docs == len(docs)
    fresh = BM25Index.build(docs, config)
    for query in (["apple", "pie"], ["jam", "plum", "banana"], WORDS):
        got = index.scores([query])
        assert got.shape == (1, len(docs))
        np.testing.assert_array_equal(got, fresh.scores([query]))
        (rows, _), (fresh_rows, _) = index.search([query], 50)[0], fresh.search([query], 50)[0]
        np.testing.assert_array_equal(rows, fresh_rows)
        picked = list(range(len(docs)))[::-2]      # any live rows, in any order, dead rows in between
        np.testing.assert_array_equal(index.score_rows(query, picked), got[0, picked])


def test_scores_do_not_depend_on_how_the_vocabulary_is_numbered() -> None:
    rng = np.random.default_rng(0)
    docs = [list(rng.choice(WORDS, size=rng.integers(1, 9))) for _ in range(200)]
    a = BM25Index.build(docs)
    b = BM25Index.build(docs)
    perm = rng.permutation(len(b.vocab))
    b = BM25Index(b.tf[:, np.argsort(perm)], {t: int(perm[i]) for t, i in b.vocab.items()})   # same docs, renumbered
    for query in (WORDS, WORDS[::-1], ["pie", "jam", "pie"]):
        np.testing.assert_array_equal(a.scores([query]), b.scores([query]))


def test_updates_refresh_only_the_query_terms_and_small_segments_merge() -> None:
    index = BM25Index.build([["apple", "pie"]] + [["banana", "tart", "cherry"]] * 19)
    index.search([["pie"]], 2)
    index.add([["cherry", "pie"]])
    assert index.n_segments == 2 and index.n_docs == 21
    seg = index._segments[0]
    index.search([["pie"]], 2)          # after an update only the query's own terms are recomputed
    fresh = seg.stamp == index._version
    assert fresh[index.vocab["pie"]] and not fresh[index.vocab["banana"]]
    rebuilt = BM25Index.build([["apple", "pie"]] + [["banana", "tart", "cherry"]] * 19 + [["cherry", "pie"]])
    np.testing.assert_array_equal(index.scores([["pie"]]), rebuilt.scores([["pie"]]))   # a partial refresh
    index.add([["plum"]] * 3)           # 3 docs after 1: the small neighbours merge (log-structured)
    assert index.n_segments == 2
    index.add([["jam"]] * 30)           # a tail as large as what came before merges into it
    assert index.n_segments == 1 and index.n_docs == 54
    index.remove([0, 53])
    assert index.n_docs == 52 and index.tf.shape[0] == 52 and index.weights.shape[1] == 52
    assert index.search([["jam"]], 100)[0][0].max() == 51
    with pytest.raises(IndexError, match="out of range"):
        index.remove([52])
    with pytest.raises(IndexError, match="out of range"):
        index.remove([-1])


def test_top_k_takes_documents_tied_at_the_cut_by_index() -> None:
    from retrieval.sparse.scoring import top_k_rows

    idx = np.array([9, 7, 5, 3, 1, 8, 6], dtype=np.int32)          # a product's row need not be sorted
    val = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0], dtype=np.float32)
    row = sp.csr_matrix((val, idx, [0, len(idx)]), shape=(1, 10))
    rows, scores = top_k_rows(row, 3)[0]
    assert rows.tolist() == [8, 1, 3] and scores.tolist() == [2.0, 1.0, 1.0]
    keep = np.ones(10, dtype=bool)
    keep[1] = False
    numbers = np.cumsum(keep) - 1
    rows, _ = top_k_rows(row, 3, keep, numbers)[0]   # row 1 removed: the next tie by index, renumbered
    assert rows.tolist() == [7, 2, 4]


def test_chunked_full_refresh_equals_the_whole_collection_formula(monkeypatch) -> None:
    from retrieval.sparse.scoring import _Segment, term_weights

    rng = np.random.default_rng(0)
    tf = sp.random(3000, 700, density=0.02, format="csr", random_state=1,
                   data_rvs=lambda n: rng.integers(1, 5, n)).astype(np.int32)
    index = BM25Index(tf, {f"t{i}": i for i in range(700)}, BM25Config(variant="okapi"))
    monkeypatch.setattr(_Segment, "CHUNK", 37)      # chunks that cut through terms' postings
    assert (index.weights != term_weights(tf, index.config)).nnz == 0


def test_removed_rows_are_dropped_once_a_quarter_of_a_segment_is_dead() -> None:
    docs = [["apple", "pie"], ["banana", "tart"]] * 20
    index = BM25Index.build(docs)
    index.add([["plum"]] * 4)
    assert index.n_segments == 2
    index.remove([40, 41, 42, 43])                       # the whole new segment: it goes
    assert index.n_segments == 1 and index._alive is None
    index.remove(list(range(5)))                         # 5 of 40: marked only
    assert index._alive is not None and index._physical_rows() == 40
    index.remove(list(range(6)))                         # 11 of 40 dead: the segment is rewritten without them
    assert index._alive is None and index._physical_rows() == 29
    np.testing.assert_array_equal(index.scores([["pie", "tart"]]), BM25Index.build(docs[11:]).scores([["pie", "tart"]]))


def test_searches_running_alongside_updates_see_a_whole_collection() -> None:
    import threading

    index = BM25Index.build([["apple", "pie"], ["banana"]] * 50)
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            try:
                for rows, scores in index.search([["pie", "w3"], ["banana", "w7"]], 5):
                    assert len(rows) == len(scores) and (rows < index.n_docs + 100).all()
            except BaseException as e:   # noqa: BLE001 - reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(40):
        index.add([[f"w{i}", "pie"]] * 3)
        if i % 7 == 0:
            index.remove([i])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
