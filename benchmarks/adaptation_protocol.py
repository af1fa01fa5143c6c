"""The TSDAE paper's adaptation protocol on SciFact: zero-shot, supervised only, and X -> supervised per X.

Each schedule is a ``retrieval train chain`` (training/chain.py): an unsupervised step on SciFact's corpus (no
queries, no qrels), then the same supervised step on SciFact **train** (809 queries, BM25 hard negatives, seeded),
evaluated on **test**. The table has, per schedule, nDCG@10 after X alone, after X -> supervised, and paired
randomisation tests against zero-shot and against supervised only (per-query nDCG@10, 300 test queries).

    python benchmarks/adaptation_protocol.py --work runs/protocol
    python benchmarks/adaptation_protocol.py --work runs/protocol --schedules supervised pairs ct

Chains skip finished steps, so a killed run continues where it stopped; ``--supervised-run FOLDER`` reuses an
existing ``retrieval train supervised`` run folder (same settings) as the supervised-only row.
Writes benchmarks/out/<name>.json after every schedule.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retrieval.data import load_beir  # noqa: E402
from retrieval.datasets import data_dir  # noqa: E402
from retrieval.eval.metrics import read_trec_run  # noqa: E402
from retrieval.eval.significance import compare_runs  # noqa: E402
from retrieval.rerank.registry import parse_option  # noqa: E402
from retrieval.argtypes import at_least  # noqa: E402
from training.chain import chain_configs, run_chain  # noqa: E402

logger = logging.getLogger("adaptation_protocol")

# The unsupervised step X of each schedule: the settings that did least harm (or most good) on their own in the
# domain-adaptation runs of RESULTS.md (gentle = low learning rate, few steps).
UNSUPERVISED = {
    "tsdae": {"objective": "tsdae", "max_steps": 40, "lr": 1e-5},
    "simcse": {"objective": "simcse", "max_steps": 20, "batch_size": 32, "lr": 3e-6},
    "ct": {"objective": "ct", "max_steps": 20, "lr": 5e-6},
    "pairs": {"objective": "pairs", "pair_source": "title-body"},
}
SCHEDULES = ("supervised", *UNSUPERVISED)


def supervised_step(scifact: Path, args: argparse.Namespace) -> dict:
    return {"objective": "supervised", "data": str(scifact), "split": "train", "epochs": args.epochs,
            "negatives_from": "bm25", "num_negatives": 1, "threads": args.threads, "seed": args.seed,
            "show_progress": False, "eval_beir": str(scifact), "eval_split": "test",
            "eval_cache_dir": str(args.work / "evalcache"), **dict(args.supervised_option)}


def chain_spec(schedule: str, scifact: Path, args: argparse.Namespace) -> dict:
    steps = [supervised_step(scifact, args)]
    if schedule != "supervised":
        first = {**UNSUPERVISED[schedule], "corpus": str(scifact), "max_seq_length": 128, "threads": args.threads,
                 "seed": args.seed, "show_progress": False, **dict(args.x_option)}
        steps.insert(0, first)
    return {"out": str(args.work / schedule), "base": args.base, "steps": steps}


def check_same_settings(folder: Path, config: Any) -> None:
    """Refuse a reused supervised run whose training settings differ from this protocol's supervised step."""
    saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))["config"]
    ours = config.to_dict()
    ignore = type(config).runtime_fields() | {"out", "threads", "base"}

    def same(key: str) -> bool:   # folders compare as resolved paths
        if key in ("data", "corpus") and saved.get(key) and ours[key]:
            return Path(saved[key]).resolve() == Path(ours[key]).resolve()
        return saved.get(key) == ours[key]

    differ = sorted(k for k in ours if k not in ignore and not same(k))
    if saved.get("base") != config.base:
        differ.insert(0, "base")
    if differ:
        raise SystemExit(f"--supervised-run {folder}: trained with other settings than this protocol's supervised "
                         f"step: " + ", ".join(f"{k}={saved.get(k)!r} (here {ours.get(k)!r})" for k in differ))


def run_schedule(schedule: str, scifact: Path, args: argparse.Namespace) -> dict:
    """Train (or finish) one chain; its evaluation runs, times and the X-alone score."""
    spec = chain_spec(schedule, scifact, args)
    configs = chain_configs(spec, where=schedule)
    if schedule == "supervised" and args.supervised_run:
        target = Path(configs[0].out)
        if not target.exists():
            check_same_settings(args.supervised_run, configs[0])
            shutil.copytree(args.supervised_run, target)   # reuse: the chain skips a finished step
    started = time.perf_counter()
    run_chain(configs, spec["out"])
    sup = Path(configs[-1].out)
    metrics = json.loads((sup / "metrics.json").read_text(encoding="utf-8"))
    steps = [json.loads((Path(c.out) / "metrics.json").read_text(encoding="utf-8")) for c in configs]
    return {"schedule": schedule, "steps": [s.get("objective") for s in steps],
            "train_seconds": [round(s.get("train_seconds", 0.0), 1) for s in steps],
            "wall_seconds_this_session": round(time.perf_counter() - started, 1),
            "before_nDCG@10": metrics["before"]["nDCG@10"],
            "x_alone_nDCG@10": metrics["before"]["nDCG@10"] if schedule != "supervised" else None,
            "after_nDCG@10": metrics["after"]["nDCG@10"], "after": metrics["after"],
            "before_run": str(sup / "eval" / "before.trec"), "after_run": str(sup / "eval" / "after.trec")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(data_dir(default=REPO.parent / "shared" / "data")))
    ap.add_argument("--work", type=Path, required=True, help="folder for the chains' run folders")
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    ap.add_argument("--supervised-run", type=Path, default=None,
                    help="an existing supervised run folder to use as the supervised-only row")
    ap.add_argument("--base", default="minilm", help="the starting model of every schedule")
    ap.add_argument("--x-option", type=parse_option, action="append", default=[],
                    help="KEY=VALUE for every unsupervised step (a config field, e.g. max_steps=40)")
    ap.add_argument("--supervised-option", type=parse_option, action="append", default=[],
                    help="KEY=VALUE for every supervised step (a config field)")
    ap.add_argument("--epochs", type=at_least(1), default=3)
    ap.add_argument("--threads", type=at_least(1), default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--name", default="adaptation_protocol")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out", help="folder for <name>.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    scifact = Path(args.data) / "beir" / "scifact" if (Path(args.data) / "beir").is_dir() else Path(args.data)
    qrels = load_beir(scifact, "test").qrels
    out = args.out / f"{args.name}.json"
    result: dict = {"command": "python benchmarks/adaptation_protocol.py " + " ".join(sys.argv[1:] if argv is None
                                                                                      else argv),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}
    order = ["supervised"] + [s for s in args.schedules if s != "supervised"]   # the reference row first
    for schedule in order:
        row = run_schedule(schedule, scifact, args)
        result["rows"].append(row)
        supervised = result["rows"][0]
        zero_shot = read_trec_run(supervised["before_run"])      # the supervised-only chain starts from the base
        after = read_trec_run(row["after_run"])
        row["zero_shot_nDCG@10"] = supervised["before_nDCG@10"]
        row["vs_zero_shot"] = compare_runs(qrels, after, zero_shot).to_dict()
        if schedule != "supervised":
            row["vs_supervised_only"] = compare_runs(qrels, after, read_trec_run(supervised["after_run"])).to_dict()
        logger.info("%s: x alone %s, after %.4f, vs zero-shot p=%.4f%s", schedule, row["x_alone_nDCG@10"],
                    row["after_nDCG@10"], row["vs_zero_shot"]["p_value"],
                    f", vs supervised only {row['vs_supervised_only']['mean_diff']:+.4f} "
                    f"p={row['vs_supervised_only']['p_value']:.4f}" if "vs_supervised_only" in row else "")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
