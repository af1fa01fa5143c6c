"""GPL's data stages in order, each cached in ``OUT/gpl/`` and resumable: generate, filter, mine, label.

``gpl_triples(config)`` returns the MarginMSE training triples; the trainer fingerprints them like any
objective's items. Stage folders (see :mod:`training.gpl.cache`)::

    OUT/gpl/generate/   chunk-*.jsonl  {"doc", "queries": [raw replies]}       chunks of documents
    OUT/gpl/queries/    queries.jsonl  {"qid", "doc", "text"}                 kept/dropped counts in the manifest
                        (``--generator extract:MODE`` writes this stage directly: queries cut out of their
                        documents, see training.gpl.extract; there is no generate stage)
    OUT/gpl/negatives/  negatives.jsonl {"qid", "positive", "negatives": [ids]}
    OUT/gpl/labels/     chunk-*.jsonl  {"qid", "positive": CE score, "negatives": [CE scores], "rank"}   chunks of
                        queries (with --teacher-interpolate W: the BM25-fused scores, see training.gpl.label;
                        rank: where the teacher puts the positive among all it scored)
    OUT/gpl/consistency/  with --consistency-depth N: how many queries the round-trip filter kept

Each stage's key holds its settings and the digest of the stage before it, so a change anywhere upstream
recomputes everything after it; each manifest records the stage's counts and wall time.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.errors import DataError
from retrieval.models import folder_fingerprint, resolve_model
from retrieval.types import Document

from training.config import GPLConfig
from training.gpl.cache import Stage, digest, field_of, read_jsonl, write_jsonl
from training.gpl.extract import extract_mode, extract_queries
from training.gpl.filter import GeneratedQuery, filter_queries
from training.gpl.generate import (Example, document_seed, example_sets, first_positives, generate_all,
                                   generator_identity, load_generator, passages_of, read_examples)
from training.gpl.label import QueryScores, fused_label_queries, label_queries, load_teacher
from training.gpl.mine import MinedQuery, mine_negatives
from training.sentences import read_corpus

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MarginTriple:
    """One MarginMSE training row: a query, its positive, one negative, and the teacher's margin."""

    query: str
    positive: str
    negative: str
    margin: float


def corpus_digest(corpus: Sequence[Document]) -> str:
    """SHA-256 over the documents' ids and texts, in order."""
    h = hashlib.sha256()
    for doc in corpus:
        for part in (doc.id, doc.full_text):
            data = part.encode("utf-8", "surrogatepass")
            h.update(f"{len(data)}:".encode("ascii") + data)
    return h.hexdigest()


def usable_documents(corpus: Sequence[Document], min_words: int, limit: int | None) -> list[Document]:
    """Documents with at least ``min_words`` words, in corpus order, the first ``limit`` of them."""
    docs = [d for d in corpus if len(d.full_text.split()) >= min_words]
    if not docs:
        raise ValueError(f"no document of the corpus has {min_words}+ words to generate queries from")
    return docs[:limit] if limit is not None else docs


def model_identity(name: str) -> dict[str, Any]:
    """A base or teacher model in a stage key: its name, plus a fingerprint of a local folder."""
    path = Path(resolve_model(name).path)
    return {"name": name, "fingerprint": folder_fingerprint(path) if path.is_dir() else None}


def _progress(config: GPLConfig, total: int, initial: int, desc: str) -> Any:
    return tqdm(total=total, initial=initial, desc=desc, unit="row", disable=not config.show_progress)


def run_chunks(stage: Stage, n: int, chunk_size: int, work: Callable[[int, int], list[dict[str, Any]]],
               bar: Any) -> None:
    """Compute rows ``done..n-1`` chunk by chunk with ``work(start, end)``, writing each chunk as it is done."""
    for start in range(stage.done_rows(), n, chunk_size):
        end = min(n, start + chunk_size)
        stage.write_chunk(start, end, work(start, end))
        bar.update(end - start)


def worked_examples(config: GPLConfig) -> list[list[Example]]:
    """The generator's example sets (one per query of a document, ``generator_shots`` each); none when zero-shot."""
    if config.generator_examples is None:
        return []
    examples = read_examples(config.generator_examples, config.generator_examples_split, config.example_words)
    return example_sets(examples, config.generator_shots, config.queries_per_doc, config.seed)


def generate_stage(config: GPLConfig, root: Path, docs: Sequence[Document], device: str,
                   examples: Sequence[Sequence[Example]] = ()) -> dict[str, list[str]]:
    """Raw replies per document id (``queries_per_doc`` each), generated in chunks or read from the cache."""
    passages = passages_of([d.full_text for d in docs], config.max_words)
    key = {"generator": generator_identity(config.generator), "queries_per_doc": config.queries_per_doc,
           "convert": config.generator_convert if config.generator.startswith("llama-cpp:") else None,
           "max_query_tokens": config.max_query_tokens, "seed": config.seed,
           "documents": digest([[d.id, p] for d, p in zip(docs, passages)])}
    if config.generator.startswith("llama-cpp:") and config.generator_buffers != "extra":
        key["buffers"] = config.generator_buffers     # only when set, so caches made before the option stay valid
    if config.generator.startswith("llm:") and not config.generator.startswith(("llm:http://", "llm:https://")):
        key["batch"] = config.generator_batch_size     # batched greedy decoding pads prompts: part of the result
        if config.generator_dtype:
            key["dtype"] = config.generator_dtype
    if examples:   # only when set, so zero-shot caches made before the option stay valid
        key["examples"] = digest([[[e.query, e.passage] for e in s] for s in examples])
    stage, started = Stage(root / "generate", key), time.perf_counter()
    if not stage.complete:
        resumed = stage.done_rows()
        if resumed:
            logger.info("generation: resuming at document %d of %d", resumed, len(docs))
        convert = None if config.generator_convert == "none" else config.generator_convert
        generator = load_generator(config.generator, config.max_query_tokens, device, config.threads, convert,
                                   extra_buffers=config.generator_buffers == "extra", dtype=config.generator_dtype,
                                   batch_size=config.generator_batch_size, examples=examples)

        def work(start: int, end: int) -> list[dict[str, Any]]:   # one chunk's documents, batched together
            replies = generate_all(generator, passages[start:end], config.queries_per_doc,
                                   [document_seed(config.seed, docs[i].id) for i in range(start, end)])
            return [{"doc": docs[i].id, "queries": r} for i, r in zip(range(start, end), replies)]

        with _progress(config, len(docs), resumed, "GPL 1/4 generate queries") as bar:
            run_chunks(stage, len(docs), config.chunk_size, work, bar)
        del generator
        stage.finish({"documents": len(docs), "raw_queries": len(docs) * config.queries_per_doc,
                      "resumed_at_document": resumed, "seconds": time.perf_counter() - started})
    return read_replies(stage, docs)


def read_replies(stage: Stage, docs: Sequence[Document]) -> dict[str, list[str]]:
    """The generation stage's raw replies per document id, checked against the documents in order."""
    raw: dict[str, list[str]] = {}
    for i, (path, n, row) in enumerate(stage.chunk_rows()):
        doc = field_of(row, "doc", str, path, n)
        replies = field_of(row, "queries", list, path, n)
        if i >= len(docs) or doc != docs[i].id or not all(isinstance(q, str) for q in replies):
            raise DataError(f"{path}, line {n}: expected the replies for document {docs[min(i, len(docs) - 1)].id!r}; "
                            f"delete {stage.folder} to regenerate")
        raw[doc] = replies
    if len(raw) != len(docs):
        raise DataError(f"{stage.folder}: holds replies for {len(raw)} of {len(docs)} documents; "
                        "delete it to regenerate")
    return raw


def filter_stage(config: GPLConfig, root: Path, raw: dict[str, list[str]], docs: Sequence[Document],
                 examples: Sequence[Sequence[Example]] = ()) -> list[GeneratedQuery]:
    """Normalised, filtered queries (``queries.jsonl``) and their kept/dropped counts (the manifest's stats);
    queries that repeat a worked example's are dropped too."""
    shown = list(dict.fromkeys(e.query for s in examples for e in s))
    key: dict[str, Any] = {"raw": digest(raw), "copy_threshold": config.copy_threshold}
    if shown:
        key["examples"] = digest(shown)
    stage = Stage(root / "queries", key)
    path = stage.folder / "queries.jsonl"
    if not stage.complete:
        passages = dict(zip((d.id for d in docs), passages_of([d.full_text for d in docs], config.max_words)))
        kept, counts = filter_queries(raw, passages, config.copy_threshold, shown)
        write_jsonl(path, ({"qid": q.qid, "doc": q.doc, "text": q.text} for q in kept))
        stage.finish(counts.to_dict())
        logger.info("generated %d queries, kept %d, dropped %s", counts.generated, counts.kept, counts.dropped)
    queries = [GeneratedQuery(field_of(r, "qid", str, path, n), field_of(r, "doc", str, path, n),
                              field_of(r, "text", str, path, n)) for n, r in enumerate(read_jsonl(path), start=1)]
    if not queries:
        raise ValueError(f"GPL: the generator's {stage.stats.get('generated')} queries were all dropped "
                         f"({stage.stats.get('dropped')}); try another --generator or a higher --copy-threshold")
    return queries


def extract_stage(config: GPLConfig, root: Path, corpus: Sequence[Document], docs: Sequence[Document]
                  ) -> tuple[list[GeneratedQuery], list[Document]]:
    """``--generator extract:MODE``: one query cut out of each usable document (``queries.jsonl``, the counts in the
    manifest) and the corpus with those documents cut, which every later stage reads."""
    mode = extract_mode(config.generator)
    queries, cut, counts = extract_queries(corpus, docs, mode, config.seed)
    if not queries:
        need = "a title and a text" if mode == "title" else "2+ sentences"
        raise ValueError(f"GPL: none of {len(docs)} documents has a {mode} to cut out as its query "
                         f"({counts.to_dict()}; extract:{mode} needs {need})")
    stage = Stage(root / "queries", {"extract": mode, "seed": config.seed,
                                     "documents": digest([[d.id, d.title, d.text] for d in docs])})
    if not stage.complete:
        write_jsonl(stage.folder / "queries.jsonl", ({"qid": q.qid, "doc": q.doc, "text": q.text} for q in queries))
        stage.finish(counts.to_dict())
    logger.info("GPL: cut a %s out of %d of %d documents as their query (%d had too little to cut, %d repeat it)",
                mode, counts.kept, counts.documents, counts.too_short, counts.repeated)
    return queries, cut


def mine_stage(config: GPLConfig, root: Path, corpus: Sequence[Document], queries: Sequence[GeneratedQuery],
               corpus_hash: str) -> list[MinedQuery]:
    """Hard negatives per query (``negatives.jsonl``), mined once."""
    dense = config.negatives_from != "bm25"
    key = {"queries": digest([[q.qid, q.doc, q.text] for q in queries]), "corpus": corpus_hash,
           "negatives_from": config.negatives_from, "num_negatives": config.num_negatives,
           "negatives_depth": config.negatives_depth, "seed": config.seed,
           "base": model_identity(config.base) if dense else None}
    stage, started = Stage(root / "negatives", key), time.perf_counter()
    path = stage.folder / "negatives.jsonl"
    if not stage.complete:
        logger.info("GPL 2/4: mining %d negatives per query from %s", config.num_negatives, config.negatives_from)
        mined = mine_negatives(corpus, queries, config.num_negatives, config.negatives_depth, config.seed,
                               config.negatives_from, resolve_model(config.base).path if dense else None,
                               config.show_progress)
        write_jsonl(path, ({"qid": m.qid, "positive": m.positive, "negatives": list(m.negatives)} for m in mined))
        stage.finish({"queries": len(mined), "negatives_per_query": config.num_negatives,
                      "seconds": time.perf_counter() - started})
    ids = {d.id for d in corpus}
    out = []
    for n, row in enumerate(read_jsonl(path), start=1):
        negatives = field_of(row, "negatives", list, path, n)
        if not all(isinstance(d, str) and d in ids for d in negatives):
            raise DataError(f"{path}, line {n}: a negative id is not in the corpus")
        out.append(MinedQuery(field_of(row, "qid", str, path, n), field_of(row, "positive", str, path, n),
                              tuple(negatives)))
    return out


def label_stage(config: GPLConfig, root: Path, mined: Sequence[MinedQuery], corpus: Sequence[Document],
                query_text: dict[str, str], teacher_id: dict[str, Any], corpus_hash: str,
                device: str) -> list[QueryScores]:
    """Teacher scores for every (query, positive) and (query, negative), in chunks of queries (raw cross-encoder
    logits, or with ``teacher_interpolate`` the cross-encoder fused with BM25 over BM25's top ``teacher_depth``)."""
    key = {"negatives": digest([[m.qid, m.positive, list(m.negatives)] for m in mined]), "corpus": corpus_hash,
           "queries": digest([query_text[m.qid] for m in mined]), "teacher": teacher_id,
           "label_max_seq_length": config.label_max_seq_length, "label_batch_size": config.label_batch_size}
    fused = config.teacher_interpolate is not None
    if fused:   # only when set, so caches made before the option stay valid
        key.update(teacher_interpolate=config.teacher_interpolate, teacher_depth=config.teacher_depth)
    stage, started = Stage(root / "labels", key), time.perf_counter()
    if not stage.complete:
        resumed = stage.done_rows()
        teacher = load_teacher(config.cross_encoder, config.label_batch_size, config.label_max_seq_length, device)
        texts = [d.full_text for d in corpus]
        row_of = {d.id: i for i, d in enumerate(corpus)}
        bm25 = _bm25_over(corpus, config.show_progress) if fused else None

        def work(start: int, end: int) -> list[dict[str, Any]]:
            if bm25 is not None:
                rows = [(m.qid, query_text[m.qid], row_of[m.positive], [row_of[d] for d in m.negatives])
                        for m in mined[start:end]]
                scored = fused_label_queries(teacher, bm25, texts, rows, config.teacher_depth,
                                             float(config.teacher_interpolate))
            else:
                scored = label_queries(teacher, [(m.qid, query_text[m.qid], texts[row_of[m.positive]],
                                                  [texts[row_of[d]] for d in m.negatives]) for m in mined[start:end]])
            return [{"qid": s.qid, "positive": s.positive, "negatives": list(s.negatives), "rank": s.positive_rank}
                    for s in scored]

        with _progress(config, len(mined), resumed, "GPL 3/4 label with the cross-encoder") as bar:
            run_chunks(stage, len(mined), config.chunk_size, work, bar)
        del teacher
        stats = {"queries": len(mined), "pairs": len(mined) * (1 + config.num_negatives),
                 "resumed_at_query": resumed, "seconds": time.perf_counter() - started}
        if fused:
            stats["teacher"] = f"cross-encoder fused with BM25 (W={config.teacher_interpolate}) over BM25's " \
                               f"top-{config.teacher_depth}"
        stage.finish(stats)
    return read_scores(stage, mined)


def _bm25_over(corpus: Sequence[Document], show_progress: bool) -> Any:
    """The default BM25 first stage (as ``Retriever.from_documents(corpus)`` builds it) over ``corpus``, row i
    being ``corpus[i]``."""
    from retrieval.retriever import Retriever

    return Retriever.from_documents(list(corpus), method="bm25", show_progress=show_progress).searcher


def read_scores(stage: Stage, mined: Sequence[MinedQuery]) -> list[QueryScores]:
    """The labelling stage's teacher scores, one row per mined query in order, checked against them."""
    scores = []
    for i, (path, n, row) in enumerate(stage.chunk_rows()):
        negatives = field_of(row, "negatives", list, path, n)
        qid = field_of(row, "qid", str, path, n)
        if i >= len(mined) or qid != mined[i].qid or len(negatives) != len(mined[i].negatives) \
                or not all(isinstance(s, (int, float)) for s in negatives):
            raise DataError(f"{path}, line {n}: does not match query {i} of the negatives; delete {stage.folder}")
        rank = row.get("rank")
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
            raise DataError(f"{path}, line {n}: \"rank\" must be a positive integer, got {rank!r}")
        scores.append(QueryScores(qid, float(field_of(row, "positive", (int, float), path, n)),
                                  tuple(float(s) for s in negatives), rank))
    if len(scores) != len(mined):
        raise DataError(f"{stage.folder}: holds scores for {len(scores)} of {len(mined)} queries; "
                        "delete it to label again")
    return scores


def real_queries(folder: str, split: str, corpus_ids: set[str]) -> list[GeneratedQuery]:
    """``--queries-from``: each judged query of a BEIR split with its first positive document as the source (qid
    ``real-<id>``), in qrels order. DataError when a source is not in the training corpus, or none is left."""
    from retrieval.data import load_beir

    data = load_beir(folder, split)
    out = []
    for qid, source in first_positives(data.qrels).items():
        if source not in corpus_ids:
            raise DataError(f"{Path(folder) / 'qrels' / f'{split}.tsv'}: query {qid!r} judges document {source!r}, "
                            "which is not in --corpus")
        out.append(GeneratedQuery(f"real-{qid}", source, " ".join(data.queries[qid].split())))
    if not out:
        raise DataError(f"{folder}, split {split!r}: no query has a positive judgment")
    logger.info("GPL: %d real queries from %s (%s) instead of generated ones", len(out), folder, split)
    return out


def consistent_queries(config: GPLConfig, root: Path, mined: Sequence[MinedQuery], scores: Sequence[QueryScores]
                       ) -> tuple[list[MinedQuery], list[QueryScores]]:
    """The round-trip filter: the queries whose source document the teacher ranks within ``consistency_depth``
    (their count is recorded in ``OUT/gpl/consistency``). DataError for labels cached without ranks."""
    depth = int(config.consistency_depth or 0)
    unranked = next((s.qid for s in scores if s.positive_rank is None), None)
    if unranked is not None:
        raise DataError(f"{root / 'labels'}: was labelled before ranks were recorded (query {unranked!r}); "
                        "delete the folder to label again, or drop --consistency-depth")
    kept = [(m, s) for m, s in zip(mined, scores) if int(s.positive_rank or 0) <= depth]
    stage = Stage(root / "consistency", {"labels": digest([[s.qid, s.positive_rank] for s in scores]), "depth": depth})
    if not stage.complete:
        ranks = [int(s.positive_rank or 0) for s in scores]
        stage.finish({"queries": len(scores), "kept": len(kept), "depth": depth,
                      "teacher_rank_1": sum(r == 1 for r in ranks), "median_rank": float(np.median(ranks))})
    logger.info("GPL round-trip filter: the teacher ranks the source document within its top %d for %d of %d "
                "queries", depth, len(kept), len(scores))
    if not kept:
        raise ValueError(f"GPL: no query's source document is within the teacher's top {depth}; "
                         "raise --consistency-depth")
    return [m for m, _ in kept], [s for _, s in kept]


def gpl_triples(config: GPLConfig, device: str = "cpu") -> list[MarginTriple]:
    """Run (or read back) stages 1-3 and return one (query, positive, negative, margin) triple per negative."""
    root = Path(config.out) / "gpl"
    teacher_id = model_identity(config.cross_encoder.partition(":")[2])   # a missing teacher fails before any work
    examples = worked_examples(config)   # a bad examples file fails before any work too
    corpus = list(read_corpus(config.corpus))
    if config.queries_from is not None:
        docs, queries = corpus, real_queries(config.queries_from, config.queries_split, {d.id for d in corpus})
    elif config.generator.startswith("extract:"):
        docs = usable_documents(corpus, config.min_words, config.max_sentences)
        queries, corpus = extract_stage(config, root, corpus, docs)
    else:
        docs = usable_documents(corpus, config.min_words, config.max_sentences)
        raw = generate_stage(config, root, docs, device, examples)
        queries = filter_stage(config, root, raw, docs, examples)
    corpus_hash = corpus_digest(corpus)
    mined = mine_stage(config, root, corpus, queries, corpus_hash)
    texts = {d.id: d.full_text for d in corpus}
    query_text = {q.qid: q.text for q in queries}
    scores = label_stage(config, root, mined, corpus, query_text, teacher_id, corpus_hash, device)
    if config.consistency_depth is not None:
        mined, scores = consistent_queries(config, root, mined, scores)
    triples = [MarginTriple(query_text[m.qid], texts[m.positive], texts[neg], margin)
               for m, s in zip(mined, scores) for neg, margin in zip(m.negatives, s.margins())]
    logger.info("GPL: %d documents -> %d queries (%d trained on) -> %d training triples", len(docs), len(queries),
                len(mined), len(triples))
    return triples
