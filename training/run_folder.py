"""A training run's folder: its ``config.json``, and the checks that make resuming safe.

``OUT/config.json`` records the objective, every config field and a fingerprint of the training data
(SHA-256 over the training items in order, and their count). A new run refuses a folder that already
holds a run (unless resumed) or that holds files of its own; a resumed run refuses changed settings
(other than runtime ones such as ``device``) and changed training data, since either would make the
resumed run differ from the one its checkpoints belong to.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from retrieval.persistence import atomic_write_text

from training.config import RunConfig
from training.registry import config_from_dict, config_to_dict

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
# What a run writes into its folder; a folder holding anything else is not ours to write into.
RUN_ENTRIES = frozenset({CONFIG_FILE, "checkpoints", "model", "metrics.json", "eval",
                         "gpl"})  # gpl: the cached stages of a GPL run (training.gpl.cache)
# The temporary files and folders of our atomic writes (``.model.tmp-*``, ``.step-0000500.old-*``,
# ``.config.json.*``...) that a killed run leaves behind, in OUT, OUT/checkpoints and OUT/eval.
LEFTOVER = re.compile(r"^\.(model|step-\d+|config\.json|metrics\.json|before\.trec|after\.trec)\.")


def _plain(item: Any) -> Any:
    return asdict(item) if is_dataclass(item) and not isinstance(item, type) else item


def data_fingerprint(items: Sequence[Any]) -> dict[str, Any]:
    """SHA-256 over the training items (sentences, documents, groups; as JSON, in order) and their count."""
    h = hashlib.sha256()
    for item in items:
        data = json.dumps(_plain(item), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        encoded = data.encode("utf-8", "surrogatepass")
        h.update(f"{len(encoded)}:".encode("ascii") + encoded)
    return {"sha256": h.hexdigest(), "items": len(items)}


def read_run(out: Path) -> dict[str, Any] | None:
    """The parsed ``config.json`` of run folder ``out`` (its config rebuilt and checked), or None."""
    path = Path(out) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
    return {**data, "config": config_from_dict(data, where=str(path))}


def remove_leftovers(out: Path) -> list[str]:
    """Delete what a killed run's atomic writes left behind (our temporary names only); returns their names."""
    removed = []
    for folder in (Path(out), Path(out) / "checkpoints", Path(out) / "eval"):
        for path in folder.iterdir() if folder.is_dir() else ():
            if not LEFTOVER.match(path.name):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def check_folder(config: RunConfig) -> dict[str, Any] | None:
    """Before any work: may ``config.out`` be written? Returns the saved run when resuming one.

    FileExistsError for an existing run without ``resume`` or a folder of other files; ValueError for
    a resumed run whose settings changed.
    """
    out = Path(config.out)
    saved = read_run(out)
    if saved is None:
        entries = list(out.iterdir()) if out.is_dir() else []
        foreign = sorted(p.name for p in entries if p.name not in RUN_ENTRIES and not LEFTOVER.match(p.name))
        if foreign:
            raise FileExistsError(f"{out}: holds files that are not a training run's ({', '.join(foreign[:5])}); "
                                  f"choose a new or empty folder")
        return None
    if not config.resume:
        raise FileExistsError(f"{out}: already holds a run ({CONFIG_FILE}); pass resume=True (--resume) "
                              f"to continue it, or choose another folder")
    old, new = saved["config"], config
    if type(old) is not type(new):
        raise ValueError(f"{out / CONFIG_FILE}: the run trains {saved.get('objective')!r}, not "
                         f"{config_to_dict(new)['objective']!r}")
    runtime = type(new).runtime_fields() | {"out"}
    old_d, new_d = old.to_dict(), new.to_dict()
    changed = sorted(k for k in new_d if k not in runtime and old_d[k] != new_d[k])
    if changed:
        raise ValueError(f"{out / CONFIG_FILE}: cannot resume with different settings: "
                         + ", ".join(f"{k} {old_d[k]!r} -> {new_d[k]!r}" for k in changed))
    return saved


def check_same_data(saved: dict[str, Any] | None, fingerprint: dict[str, Any], out: Path) -> None:
    """Refuse to resume on training data other than the run's (its fingerprint is in ``config.json``)."""
    if saved is None:
        return
    recorded = saved.get("data_fingerprint")
    if recorded != fingerprint:
        raise ValueError(f"{Path(out) / CONFIG_FILE}: the training data changed since this run began "
                         f"(was {recorded}, now {fingerprint}); resuming would train on other data than its "
                         f"checkpoints. Restore the corpus or start a new run in another folder")


def write_run(config: RunConfig, fingerprint: dict[str, Any]) -> Path:
    """Create the run folder and write its ``config.json`` (atomically)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"format_version": FORMAT_VERSION, **config_to_dict(config), "data_fingerprint": fingerprint}
    atomic_write_text(out / CONFIG_FILE, json.dumps(record, indent=2, sort_keys=True))
    return out
