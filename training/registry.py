"""The one list of training objectives: name -> (config class, module that trains it).

An objective's module provides what :mod:`training.trainer` needs (see :class:`training.objective.ObjectiveModule`):
``training_items(config)``, ``build(config, model, items)`` and ``MODEL`` (how its model is loaded, saved and
evaluated). Modules are imported only when a run starts, so listing objectives (the CLI) stays cheap.
"""
from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.errors import MissingDependency

from training.config import (CrossEncoderConfig, CTConfig, GPLConfig, PairsConfig, RunConfig, SimCSEConfig,
                             SupervisedConfig, TSDAEConfig)


@dataclass(frozen=True)
class Registered:
    """One objective: its config class, the module that trains it, and a one-line summary."""

    config: type[RunConfig]
    module: str
    summary: str

    def load(self) -> Any:
        """The objective's module (imports torch and friends); MissingDependency names what to install."""
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("training", "retrieval"):
                raise
            raise MissingDependency(f"{self.module} needs {exc.name}: pip install 'retrievekit[train]'") from exc


OBJECTIVES: dict[str, Registered] = {
    "tsdae": Registered(TSDAEConfig, "training.tsdae", "denoising auto-encoder on corpus sentences (TSDAE)"),
    "simcse": Registered(SimCSEConfig, "training.simcse", "a sentence and itself through dropout (SimCSE)"),
    "ct": Registered(CTConfig, "training.contrastive_tension", "two encoder copies agree on a sentence (CT)"),
    "pairs": Registered(PairsConfig, "training.pairs", "title -> text or sentence -> document pairs, in-batch negatives"),
    "supervised": Registered(SupervisedConfig, "training.supervised",
                             "fine-tune an embedder on a BEIR split: in-batch + mined hard negatives"),
    "gpl": Registered(GPLConfig, "training.gpl.margin_mse",
                      "GPL: generated queries, mined negatives, cross-encoder margins, MarginMSE"),
    "cross-encoder": Registered(CrossEncoderConfig, "training.cross_encoder",
                                "fine-tune a reranker on a BEIR split with BM25-mined hard negatives"),
}


def objective_name(config: RunConfig) -> str:
    """The registered name of a config's objective."""
    for name, entry in OBJECTIVES.items():
        if type(config) is entry.config:
            return name
    raise ValueError(f"{type(config).__name__} is not a registered objective's config; "
                     f"objectives: {', '.join(OBJECTIVES)}")


def registered(name: str) -> Registered:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; objectives: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def make_config(objective: str, **values: Any) -> RunConfig:
    """The config of ``objective`` from field values (``make_config("tsdae", corpus=..., out=...)``)."""
    return registered(objective).config.from_dict(values)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """``{"objective": name, "config": fields}``: what a run folder's ``config.json`` holds (plus metadata)."""
    return {"objective": objective_name(config), "config": config.to_dict()}


def config_from_dict(data: Mapping[str, Any], where: str = "config") -> RunConfig:
    """Inverse of :func:`config_to_dict`; unknown objectives and keys raise ValueError naming ``where``."""
    if not isinstance(data, Mapping) or "objective" not in data or not isinstance(data.get("config"), Mapping):
        raise ValueError(f"{where}: expected an object with 'objective' and 'config'")
    try:
        return make_config(str(data["objective"]), **data["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write ``config`` as JSON (atomically) for :func:`load_config`."""
    from retrieval.persistence import atomic_write_text

    atomic_write_text(path, json.dumps(config_to_dict(config), indent=2, sort_keys=True))
    return Path(path)


def load_config(path: str | Path) -> RunConfig:
    """A config from a JSON file that :func:`save_config` wrote, or from a run folder's ``config.json``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
    return config_from_dict(data, where=str(path))

