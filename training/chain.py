"""Training steps run in order, each starting from the model the step before it saved.

This is the adaptation protocol of the TSDAE paper (Wang, Reimers & Gurevych, 2021, section 7): an unsupervised
step on the target corpus (TSDAE, SimCSE, CT, corpus pairs), then supervised fine-tuning on the labels there
are. A chain is a JSON file::

    {"out": "runs/tsdae-sup", "base": "minilm",
     "steps": [{"objective": "tsdae", "corpus": "../shared/data/beir/scifact", "max_steps": 400},
               {"objective": "supervised", "data": "../shared/data/beir/scifact",
                "eval_beir": "../shared/data/beir/scifact"}]}

Step ``i`` trains in ``OUT/<i>-<objective>`` (its own config.json, checkpoints and metrics); its ``base`` is the
previous step's ``model`` folder (the first step's is the chain's ``base``, else its own). Running a chain again
skips finished steps and resumes an interrupted one, so a killed chain continues where it stopped.
``OUT/chain.json`` sums up every step's nDCG@10 before and after, where a step was evaluated.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from retrieval.persistence import atomic_write_text

from training.config import RunConfig
from training.registry import make_config, objective_name

logger = logging.getLogger(__name__)


def chain_configs(spec: Mapping[str, Any], where: str = "chain") -> list[RunConfig]:
    """One config per step of ``spec`` (see the module docs), ``out`` and ``base`` filled in."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("out"), str) or not spec["out"]:
        raise ValueError(f"{where}: expected an object with 'out' (a folder) and 'steps' (a list)")
    steps = spec.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ValueError(f"{where}: 'steps' must be a non-empty list of {{'objective': NAME, ...fields}}")
    unknown = sorted(set(spec) - {"out", "base", "steps"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; a chain has 'out', 'base' and 'steps'")
    out = Path(spec["out"])
    configs: list[RunConfig] = []
    for i, step in enumerate(steps):
        here = f"{where}: steps[{i}]"
        if not isinstance(step, Mapping) or not isinstance(step.get("objective"), str):
            raise ValueError(f"{here}: expected an object with 'objective'")
        for key in ("out", "base") if i else ("out",):
            if key in step:
                raise ValueError(f"{here}: '{key}' is set by the chain (step {i} starts from step {i - 1}'s model)"
                                 if key == "base" else f"{here}: 'out' is set by the chain ({out}/<i>-<objective>)")
        values = {k: v for k, v in step.items() if k != "objective"}
        values["out"] = str(out / f"{i}-{step['objective']}")
        if i:
            values["base"] = str(Path(configs[-1].out) / "model")
        elif "base" in spec and "base" not in values:
            values["base"] = spec["base"]
        try:
            configs.append(make_config(step["objective"], **values))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{here}: {exc}") from None
    return configs


def _finished(config: RunConfig) -> bool:
    out = Path(config.out)
    metrics = out / "metrics.json"
    return (out / "model").is_dir() and metrics.is_file() and "steps" in json.loads(metrics.read_text("utf-8"))


def run_chain(configs: Sequence[RunConfig], out: str | Path) -> list[Path]:
    """Train the steps in order (finished ones skipped, an interrupted one resumed); the model folders."""
    from training.trainer import run

    folders, summary = [], []
    for i, config in enumerate(configs):
        if _finished(config):
            logger.info("chain step %d (%s) already finished: %s", i, objective_name(config), config.out)
        else:
            resume = Path(config.out).exists() and any(Path(config.out).iterdir())
            run(replace(config, resume=resume) if resume else config)
        folders.append(Path(config.out) / "model")
        metrics = json.loads((Path(config.out) / "metrics.json").read_text("utf-8"))
        summary.append({"step": i, "objective": objective_name(config), "out": config.out, "base": config.base,
                        **{k: metrics[k].get("nDCG@10") for k in ("before", "after") if k in metrics},
                        **({"p_value": metrics["after_vs_before"].get("p_value")}
                           if "after_vs_before" in metrics else {})})
    atomic_write_text(Path(out) / "chain.json", json.dumps(summary, indent=2))
    return folders


def load_chain(path: str | Path) -> tuple[list[RunConfig], Path]:
    """The step configs and output folder of a chain JSON file (errors name the file and line)."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
    return chain_configs(spec, where=str(path)), Path(spec["out"])
