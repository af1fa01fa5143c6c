"""Import a script of benchmarks/ as a module, for tests of the scripts' own logic."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent.parent


def load_script(name: str) -> ModuleType:
    """benchmarks/<name>.py as the module ``bench_<name>`` (registered in sys.modules, so dataclasses work)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
