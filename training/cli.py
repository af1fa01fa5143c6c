"""``retrieval train tsdae|simcse|ct|pairs|cross-encoder ...``: the command-line face of ``training.trainer``.

Importing this module is cheap (no torch); the heavy imports happen when the command runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

OBJECTIVES = ("tsdae", "simcse", "ct", "pairs")


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, help="BEIR folder, JSONL/CSV/TSV file, or .txt (one document a line)")
    p.add_argument("--base", default="minilm", help="model to adapt: alias (minilm), local folder or hub name")
    p.add_argument("--out", required=True, help="run folder; the model is written to OUT/model")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps (default: run --epochs)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, help="default: the objective's paper default")
    p.add_argument("--lr", type=float, help="default: the objective's paper default")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-seq-length", type=int, default=128, help="training length in tokens")
    p.add_argument("--pooling", choices=["auto", "cls", "mean", "max"], default="auto")
    p.add_argument("--max-sentences", type=int, help="use only the first N unique sentences")
    p.add_argument("--min-words", type=int, default=5)
    p.add_argument("--max-words", type=int, default=64)
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue OUT from its last checkpoint")
    p.add_argument("--eval-beir", metavar="DIR", help="BEIR folder: nDCG@10 before and after training")
    p.add_argument("--eval-split", default="test")
    p.add_argument("--eval-max-seq-length", type=int, default=256)
    p.add_argument("--eval-cache-dir", help="cache the base model's corpus embeddings here")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _objective_flags(name: str, p: argparse.ArgumentParser) -> None:
    if name == "tsdae":
        p.add_argument("--noise", choices=["delete", "swap", "mask"], default="delete")
        p.add_argument("--noise-ratio", type=float, default=0.6)
        p.add_argument("--noise-unit", choices=["word", "token"], default="word")
        p.add_argument("--untied", action="store_true", help="do not tie encoder and decoder weights")
    elif name == "simcse":
        p.add_argument("--temperature", type=float, default=0.05)
    elif name == "pairs":
        p.add_argument("--pair-source", choices=["title-body", "ict"], default="title-body",
                       help="anchor -> passage: a title -> its text, or a sentence -> the rest of its document")
    else:
        p.add_argument("--variant", choices=["in-batch", "original"], default="in-batch")
        p.add_argument("--pos-neg-ratio", type=int, default=8)


def config_from_args(args: argparse.Namespace):
    """The ``TrainConfig`` the flags describe."""
    from training.config import TrainConfig

    extra = {}
    if args.objective == "tsdae":
        extra = {"noise": args.noise, "noise_ratio": args.noise_ratio, "noise_unit": args.noise_unit,
                 "tie_weights": not args.untied}
    elif args.objective == "simcse":
        extra = {"temperature": args.temperature}
    elif args.objective == "ct":
        extra = {"ct_variant": args.variant, "pos_neg_ratio": args.pos_neg_ratio}
    elif args.objective == "pairs":
        extra = {"pair_source": args.pair_source}
    return TrainConfig(
        objective=args.objective, corpus=args.corpus, base=args.base, out=args.out, max_steps=args.max_steps,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_ratio=args.warmup_ratio, seed=args.seed,
        max_seq_length=args.max_seq_length, pooling=args.pooling, max_sentences=args.max_sentences,
        min_words=args.min_words, max_words=args.max_words, checkpoint_every=args.checkpoint_every,
        resume=args.resume, eval_beir=args.eval_beir, eval_split=args.eval_split,
        eval_max_seq_length=args.eval_max_seq_length, eval_cache_dir=args.eval_cache_dir, device=args.device,
        threads=args.threads, show_progress=not args.no_progress, **extra)


def cmd_train(args: argparse.Namespace) -> int:
    if args.objective == "cross-encoder":
        from training.cross_encoder import config_from_args as ce_config, train_cross_encoder

        print(f"model: {train_cross_encoder(ce_config(args))}")
        return 0
    from training.trainer import run

    folder = run(config_from_args(args))
    metrics_path = Path(args.out) / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    print(f"model: {folder}")
    print(f"steps: {metrics['steps']}  ({metrics['steps_per_second'] or 0:.2f} steps/s)  "
          f"final loss {metrics['losses'][-1]:.4f}" if metrics["losses"] else f"steps: {metrics['steps']}")
    for when in ("before", "after"):
        if metrics.get(when):
            print(f"{when:>6}: nDCG@10 {metrics[when]['nDCG@10']:.4f}  Recall@100 {metrics[when]['Recall@100']:.4f}")
    return 0


def add_train_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` with one sub-command per objective (plus ``cross-encoder`` when that module exists)."""
    train = subparsers.add_parser("train", help="adapt an embedding model to a corpus (TSDAE, SimCSE, CT, corpus pairs)",
                                  description="Domain adaptation from unlabeled text; writes OUT/model.")
    objectives = train.add_subparsers(dest="objective", required=True, metavar="{" + ",".join((*OBJECTIVES, "cross-encoder")) + "}")
    for name in OBJECTIVES:
        p = objectives.add_parser(name, help=f"train with {name}")
        _common_flags(p)
        _objective_flags(name, p)
        p.set_defaults(func=cmd_train)
    from training.cross_encoder import add_arguments as ce_arguments

    p = objectives.add_parser("cross-encoder", help="fine-tune a cross-encoder reranker on a BEIR train split "
                              "with BM25-mined hard negatives")
    ce_arguments(p)
    p.set_defaults(func=cmd_train)
    return train
