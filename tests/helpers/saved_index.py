"""Editing saved index folders in tests: rewrite the manifest, downgrade to format 1, damage arrays."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def write_manifest(folder: Path, data: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def as_format_1(folder: Path) -> None:
    """Turn a saved index into one written by the previous format (no ``files`` checksum table)."""
    data = manifest(folder)
    data.pop("files", None)
    data["format_version"] = 1
    write_manifest(folder, data)


def edit_array(path: Path, change: Any) -> None:
    """Replace a ``.npy`` file by ``change(array)``."""
    np.save(path, change(np.load(path)), allow_pickle=False)


def edit_json(path: Path, change: Any) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text(encoding="utf-8")))), encoding="utf-8")
