"""Flat options onto stage configs: one table per method, for ``Retriever.from_documents`` and the CLI.

Each first stage's ``build`` takes config objects (``BM25Searcher.build(docs, config=BM25Config(...),
tokenizer=...)``, ``HybridSearcher.build(docs, bm25=..., dense=..., fusion=...)``). For convenience,
``from_documents(docs, method, k1=0.9, backend="onnx")`` and ``retrieval index --k1 0.9 --backend onnx``
take flat options instead; :data:`METHOD_OPTIONS` says, per method, which config field each one sets.
The flat names are the configs' own field names, so they are written once, in the dataclasses.
"""
from __future__ import annotations

import argparse
import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from retrieval.configs import field_names
from retrieval.dense.encoders import EncoderConfig
from retrieval.dense.searcher import IndexConfig
from retrieval.hybrid.searcher import FusionConfig
from retrieval.sparse.scoring import BM25Config
from retrieval.sparse.tokenize import PRESETS, TokenizerConfig


@dataclass(frozen=True)
class Slot:
    """One config keyword of a method's ``build``, filled from a config object, a whole value or field options."""

    keyword: str                                  # the keyword of build() that takes it
    config: type                                  # its config class; field names become flat options
    whole: str | None = None                      # flat option that gives the whole value (a name, config, object)
    from_string: Callable[[str], Any] | None = None   # how a string given to ``whole`` becomes a config
    whole_help: str = ""
    exclude: tuple[str, ...] = ()                 # fields that are not flat options

    def options(self) -> tuple[str, ...]:
        return tuple(n for n in field_names(self.config) if n not in self.exclude)

    def coerce(self, value: Any) -> Any:
        """A whole value as this slot's config: strings through ``from_string``; configs and objects as given."""
        if isinstance(value, str) and self.from_string is not None:
            return self.from_string(value)
        if isinstance(value, str):
            raise ValueError(f"{self.whole} takes a {self.config.__name__} or a ready object, not a string")
        return value

    def default(self, show_progress: bool) -> Any:
        """The slot's default config (progress bars follow ``from_documents``'s ``show_progress``)."""
        if "show_progress" in field_names(self.config):
            return self.config(show_progress=show_progress)
        return self.config()


@dataclass(frozen=True)
class Plain:
    """A build keyword passed through unchanged (not part of any config: runtime choices and opt-ins)."""

    name: str
    type: type
    help: str


@dataclass(frozen=True)
class MethodOptions:
    """The flat options of one method: which build keyword and config field each one sets."""

    method: str
    slots: tuple[Slot, ...]
    plain: tuple[Plain, ...] = ()
    renamed: Mapping[str, str] = field(default_factory=dict)   # old flat name -> its new name, for the error

    def __post_init__(self) -> None:
        names = [n for s in self.slots for n in ((s.whole,) if s.whole else ()) + s.options()]
        names += [p.name for p in self.plain]
        clashes = {n for n in names if names.count(n) > 1}
        if clashes:   # the hybrid bug: one name meaning two stages' options
            raise ValueError(f"method {self.method!r}: options {sorted(clashes)} would set two things")

    def flat(self) -> dict[str, tuple[Slot | None, str | None]]:
        """Every flat option -> (slot, field); field None: the whole slot; slot None: a plain build keyword."""
        out: dict[str, tuple[Slot | None, str | None]] = {}
        for slot in self.slots:
            if slot.whole:
                out[slot.whole] = (slot, None)
            out.update({name: (slot, name) for name in slot.options()})
        out.update({p.name: (None, None) for p in self.plain})
        return out


_TOKENIZER = Slot("tokenizer", TokenizerConfig, whole="tokenizer", from_string=TokenizerConfig.preset,
                  whole_help="tokenizer preset (default: default)")
_INDEX = Slot("index", IndexConfig, whole="index", from_string=lambda name: IndexConfig(name=name),
              whole_help=IndexConfig.__dataclass_fields__["name"].metadata["help"], exclude=("name", "factory"))
_BM25_PLAIN = (Plain("n_jobs", int, "threads for batched BM25 search (default: all cores)"),
               Plain("allow_custom_pattern", bool, "accept a token_pattern other than the presets' own"),
               Plain("index_workers", int, "processes that tokenize documents at build time (default: every core "
                                           "from 20,000 documents, else 1); the index is the same either way"))


def _encoder(keyword: str) -> Slot:
    return Slot(keyword, EncoderConfig, whole="encoder", exclude=("show_progress", "calibration"),
                whole_help="a ready BiEncoder, or an EncoderConfig")


METHOD_OPTIONS: dict[str, MethodOptions] = {m.method: m for m in (
    MethodOptions("bm25", (Slot("config", BM25Config), _TOKENIZER), _BM25_PLAIN,
                  renamed={"backend": "implementation"}),
    MethodOptions("dense", (_encoder("encoder"), _INDEX)),
    MethodOptions("hybrid", (Slot("bm25", BM25Config), _TOKENIZER, _encoder("dense"), _INDEX,
                             Slot("fusion", FusionConfig)), _BM25_PLAIN),
)}


def method_options(method: str) -> MethodOptions:
    if method not in METHOD_OPTIONS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHOD_OPTIONS)}")
    return METHOD_OPTIONS[method]


def valid_options(method: str) -> list[str]:
    """The flat option names ``from_documents`` accepts for ``method``."""
    return list(method_options(method).flat())


def _check_names(table: MethodOptions, options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - set(table.flat()))
    if unknown:
        hints = "".join(f" ({old!r} is now called {new!r})" for old, new in table.renamed.items() if old in unknown)
        raise ValueError(f"method {table.method!r}: unknown option(s) {unknown}{hints}; valid options: "
                         f"{', '.join(table.flat())}; or pass config= objects "
                         f"({', '.join(s.config.__name__ for s in table.slots)})")


def _place_configs(table: MethodOptions, configs: Any) -> dict[str, Any]:
    """Config objects by the build keyword that takes their type."""
    items = [] if configs is None else list(configs) if isinstance(configs, (list, tuple)) else [configs]
    values: dict[str, Any] = {}
    for obj in items:
        slot = next((s for s in table.slots if isinstance(obj, s.config)), None)
        if slot is None:
            raise ValueError(f"method {table.method!r} takes config= objects of type "
                             f"{', '.join(s.config.__name__ for s in table.slots)}; got {type(obj).__name__}")
        if slot.keyword in values:
            raise ValueError(f"method {table.method!r}: two {slot.config.__name__} objects given")
        values[slot.keyword] = obj
    return values


def build_kwargs(method: str, options: Mapping[str, Any], configs: Any = None,
                 show_progress: bool = True) -> dict[str, Any]:
    """The keyword arguments of ``method``'s ``build`` from flat ``options`` and ``configs`` (one config
    object or a list of them). Unknown names raise ValueError naming the method and its valid options."""
    table = method_options(method)
    _check_names(table, options)
    values = _place_configs(table, configs)
    flat = table.flat()
    for slot in table.slots:
        if slot.whole in options:
            if slot.keyword in values:
                raise ValueError(f"method {method!r}: {slot.whole}= and a {slot.config.__name__} config both given")
            values[slot.keyword] = slot.coerce(options[slot.whole])
        given = {f: options[n] for n, (s, f) in flat.items() if s is slot and f is not None and n in options}
        if given:
            base = values[slot.keyword] if slot.keyword in values else slot.default(show_progress)
            if not isinstance(base, slot.config):
                raise ValueError(f"method {method!r}: options {sorted(given)} cannot change a ready "
                                 f"{type(base).__name__}; pass a {slot.config.__name__} instead")
            values[slot.keyword] = base.with_options(**given)
    values.update({p.name: options[p.name] for p in table.plain if p.name in options})
    return values


# --- the CLI ------------------------------------------------------------------------------------

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cli_type(cls: type, name: str) -> type | None:
    """The scalar type of a config field (``int | None`` -> int); None for fields the CLI cannot express."""
    hint = typing.get_type_hints(cls)[name]
    kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (bool, int, float, str) else None


@functools.lru_cache(maxsize=1)
def _cli_specs() -> dict[str, dict[str, Any]]:
    """One argparse spec per flat option of any method, grouped by the config that owns it."""
    specs: dict[str, dict[str, Any]] = {}
    for table in METHOD_OPTIONS.values():
        for slot in table.slots:
            group = slot.config.__name__
            if slot.whole and slot.from_string is not None:
                choices = sorted(PRESETS) if slot.config is TokenizerConfig else None
                specs.setdefault(slot.whole, {"group": group, "type": str, "help": slot.whole_help,
                                              "choices": choices, "default": None})
            for f in fields(slot.config):
                kind = _cli_type(slot.config, f.name) if f.name in slot.options() else None
                if kind is not None:
                    default = f.default
                    help_text = f.metadata.get("help", "") + ("" if default is None else f" (default: {default})")
                    specs.setdefault(f.name, {"group": group, "type": kind, "help": help_text,
                                              "choices": f.metadata.get("choices"), "default": default})
        for p in table.plain:
            specs.setdefault(p.name, {"group": "runtime", "type": p.type, "help": p.help, "choices": None,
                                      "default": False if p.type is bool else None})
    return specs


CLI_ALIASES = {"backend": ("--int8-backend",)}   # flags kept from earlier releases


def add_build_flags(parser: argparse.ArgumentParser) -> None:
    """``--method`` and one flag per flat option of any method; an unset flag keeps the library default."""
    parser.add_argument("--method", choices=sorted(METHOD_OPTIONS), default="bm25", help="first stage (default: bm25)")
    groups: dict[str, Any] = {}
    for name, spec in _cli_specs().items():
        group = groups.get(spec["group"]) or groups.setdefault(
            spec["group"], parser.add_argument_group(f"build options ({spec['group']})"))
        flags = (_flag(name), *CLI_ALIASES.get(name, ()))
        methods = ", ".join(m for m, t in METHOD_OPTIONS.items() if name in t.flat())
        help_text = f"{spec['help']} [{methods}]"
        if spec["type"] is bool:   # --flag for what is off by default, --flag/--no-flag for what is on
            action = argparse.BooleanOptionalAction if spec["default"] else "store_true"
            group.add_argument(*flags, dest=name, action=action, default=None, help=help_text)
        else:
            group.add_argument(*flags, dest=name, type=spec["type"], choices=spec["choices"], default=None,
                               help=help_text)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flat options of the flags that were given; a flag that does not apply to ``--method`` is an error."""
    given = {name: getattr(args, name) for name in _cli_specs() if getattr(args, name, None) is not None}
    valid = method_options(args.method).flat()
    wrong = [_flag(n) for n in given if n not in valid]
    if wrong:
        verb = "does" if len(wrong) == 1 else "do"
        raise ValueError(f"{', '.join(wrong)} {verb} not apply to --method {args.method}; its options: "
                         f"{', '.join(_flag(n) for n in valid if n in _cli_specs())}")
    return given
