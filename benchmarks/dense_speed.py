"""Encoding speed: BiEncoder (fp32, torch int8, ONNX fp32 and int8, bf16) against plain ``SentenceTransformer.encode``, same batch.

    python benchmarks/dense_speed.py [--data ../shared/data] [--docs 320] [--chunk 64]

The peers run in the same process on the same fixed subset (the first ``--docs`` SciFact
documents, title + " " + text). To keep a shared, noisy machine fair, the subset is cut into chunks
and every chunk is encoded by all peers in a rotating order; each peer's time is its sum over chunks.
Writes ``benchmarks/out/dense_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No OMP_WAIT_POLICY=PASSIVE here: it made FAISS k-means faster on a busy machine, but torch shares the OpenMP
# runtime and sleeping threads double one-query encoding latency (7.7 -> 15.0 ms p50, measured idle).

from retrieval.dense.cpu import has_fast_bf16, has_fast_int8  # noqa: E402
from retrieval.data import iter_documents  # noqa: E402
from retrieval.datasets import data_dir  # noqa: E402
from retrieval.dense.encoders import load_encoder  # noqa: E402
from retrieval.errors import MissingDependency  # noqa: E402
from retrieval.models import resolve_model  # noqa: E402
from retrieval.dense.quantize import default_engine  # noqa: E402

logger = logging.getLogger("dense_speed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(data_dir(default=REPO.parent / "shared" / "data")))
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--docs", type=int, default=320)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime peers (int8 and fp32)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast peer")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch
    from sentence_transformers import SentenceTransformer

    docs = []
    for d in iter_documents(Path(args.data) / "beir" / "scifact"):
        docs.append(d)
        if len(docs) == args.docs:
            break
    [d.full_text for d in docs]
    plain = SentenceTransformer(resolve_model(args.model).path, device="cpu")
    ours = load_encoder(args.model, batch_size=args.batch_size, show_progress=False, device="cpu")
    int8 = load_encoder(args.model, int8=True, batch_size=args.batch_size, show_progress=False)
    peers = {
        "sentence-transformers encode": lambda chunk: plain.encode([d.full_text for d in chunk],
                                                                   batch_size=args.batch_size,
                                                                   show_progress_bar=False),
        "retrievekit fp32": ours.encode_documents,
        "retrievekit int8": int8.encode_documents,
    }
    if not args.no_bf16:
        peers["retrievekit bf16"] = load_encoder(args.model, bf16=True, batch_size=args.batch_size,
                                                 show_progress=False, device="cpu").encode_documents
    if not args.no_onnx:
        t = time.perf_counter()
        try:
            onnx = load_encoder(args.model, int8=True, backend="onnx", batch_size=args.batch_size,
                                show_progress=False)
        except MissingDependency as exc:
            logger.warning("skipping the ONNX int8 peer: %s", exc)
        else:
            logger.info("onnx int8 encoder ready in %.1f s (export + quantise on first use, then cached)",
                        time.perf_counter() - t)
            peers["retrievekit int8 onnx"] = onnx.encode_documents
            peers["retrievekit fp32 onnx"] = load_encoder(args.model, backend="onnx", batch_size=args.batch_size,
                                                          show_progress=False).encode_documents
    for fn in peers.values():   # warm-up: first call allocates
        fn(docs[:8])
    seconds = {name: 0.0 for name in peers}
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in peers}
    names = list(peers)
    for i, start in enumerate(range(0, len(docs), args.chunk)):
        chunk = docs[start:start + args.chunk]
        for name in names[i % len(names):] + names[:i % len(names)]:
            t = time.perf_counter()
            outputs[name].append(np.asarray(peers[name](chunk), dtype=np.float32))
            seconds[name] += time.perf_counter() - t
        logger.info("chunk %d: %s", i, {n: round(s, 1) for n, s in seconds.items()})
    ref = np.vstack(outputs["sentence-transformers encode"])
    result = {"n_docs": len(docs), "batch_size": args.batch_size, "max_seq_length": ours.max_seq_length,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "cpu_fast_int8": has_fast_int8(), "cpu_fast_bf16": has_fast_bf16(),
              "int8_packing": default_engine(),
              "load_avg_1min_end": os.getloadavg()[0], "peers": {}}
    for name in names:
        emb = np.vstack(outputs[name])
        cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
        result["peers"][name] = {"seconds": seconds[name], "docs_per_s": len(docs) / seconds[name],
                                 "speedup_vs_plain": seconds["sentence-transformers encode"] / seconds[name],
                                 "mean_cosine_vs_plain": float(cos.mean()), "min_cosine_vs_plain": float(cos.min())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dense_speed.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
