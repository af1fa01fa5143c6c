"""Encoding speed: BiEncoder (fp32, torch int8, ONNX fp32 and int8, bf16, OpenVINO fp32 and static int8) against plain
``SentenceTransformer.encode`` and sentence-transformers' own ONNX int8 backend, same batch.

    python benchmarks/dense_speed.py [--data ../shared/data] [--docs 320] [--chunk 64]

OpenVINO int8 is calibrated (NNCF) on 300 SciFact passages that are not among the timed ones. The
sentence-transformers ONNX int8 peer is ``export_dynamic_quantized_onnx_model(model, "avx512_vnni"|"avx2")`` then
``SentenceTransformer(..., backend="onnx")``, as its efficiency docs do; it needs ``optimum-onnx`` (which pins
transformers < 4.58), so it is skipped with a warning where that is not installed.

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

from retrieval.dense.cpu import cpu_flags, has_fast_bf16, has_fast_int8  # noqa: E402
from retrieval.data import iter_documents  # noqa: E402
from retrieval.datasets import data_dir  # noqa: E402
from retrieval.dense.encoders import load_encoder  # noqa: E402
from retrieval.errors import MissingDependency  # noqa: E402
from retrieval.models import resolve_model  # noqa: E402
from retrieval.dense.quantize import default_engine  # noqa: E402
from retrieval.argtypes import at_least  # noqa: E402

logger = logging.getLogger("dense_speed")


def versions() -> dict[str, str | None]:
    """Versions of the runtimes the peers use (the ST ONNX peer may run in an environment with older ones)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "sentence-transformers", "onnxruntime", "openvino", "nncf", "optimum-onnx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def sentence_transformers_onnx_int8(model: str, folder: Path):
    """sentence-transformers' own ONNX int8 model (dynamic, its AVX512-VNNI or AVX2 config), or None without optimum."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers import export_dynamic_quantized_onnx_model
        import optimum.onnxruntime  # noqa: F401
    except ImportError as exc:
        logger.warning("skipping sentence-transformers' ONNX int8 peer (needs optimum-onnx[onnxruntime]): %s", exc)
        return None
    config = "avx512_vnni" if "avx512_vnni" in cpu_flags() else "avx2"
    name = f"model_qint8_{config}.onnx"
    if not (folder / "onnx" / name).is_file():
        base = SentenceTransformer(resolve_model(model).path, device="cpu", backend="onnx")  # exports fp32 ONNX
        base.save(str(folder))
        export_dynamic_quantized_onnx_model(base, config, str(folder))
    return SentenceTransformer(str(folder), device="cpu", backend="onnx", model_kwargs={"file_name": f"onnx/{name}"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(data_dir(default=REPO.parent / "shared" / "data")))
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--docs", type=at_least(1), default=320)
    ap.add_argument("--chunk", type=at_least(1), default=64)
    ap.add_argument("--batch-size", type=at_least(1), default=32)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime peers (int8 and fp32)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast peer")
    ap.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO peers (fp32 and static int8)")
    ap.add_argument("--only", default=None, help="comma-separated peer names to keep (plain ST always runs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch
    from sentence_transformers import SentenceTransformer

    docs, calibration = [], []
    for d in iter_documents(Path(args.data) / "beir" / "scifact"):
        (docs if len(docs) < args.docs else calibration).append(d)
        if len(calibration) == 300:
            break
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
    if not args.no_openvino:
        t = time.perf_counter()
        try:
            ov_int8 = load_encoder(args.model, int8=True, backend="openvino", batch_size=args.batch_size,
                                   show_progress=False)
            ov_int8.openvino.calibrate([d.full_text for d in calibration])
        except MissingDependency as exc:
            logger.warning("skipping the OpenVINO peers: %s", exc)
        else:
            logger.info("openvino int8 encoder ready in %.1f s (convert + calibrate once, then cached)",
                        time.perf_counter() - t)
            peers["retrievekit int8 openvino"] = ov_int8.encode_documents
            peers["retrievekit fp32 openvino"] = load_encoder(args.model, backend="openvino", batch_size=args.batch_size,
                                                              show_progress=False).encode_documents
    st_onnx = sentence_transformers_onnx_int8(args.model, Path(args.out) / "st-onnx-int8")
    if st_onnx is not None:
        peers["sentence-transformers onnx int8"] = lambda chunk: st_onnx.encode(
            [d.full_text for d in chunk], batch_size=args.batch_size, show_progress_bar=False)
    if args.only:
        keep = set(args.only.split(",")) | {"sentence-transformers encode"}
        peers = {name: fn for name, fn in peers.items() if name in keep}
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
              "versions": versions(),
              "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"}),
              "command": "python benchmarks/dense_speed.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
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
