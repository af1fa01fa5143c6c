"""The shared shape of every stage config: a frozen dataclass with ``to_dict`` and a strict ``from_dict``.

Configs validate themselves once, in ``__post_init__``; ``from_dict`` reads what ``to_dict`` wrote (and
what older releases wrote, through each class's ``RENAMED`` map) and refuses keys it does not know.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, fields, replace
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="Config")


def field_names(cls: type) -> tuple[str, ...]:
    """The field names of a config class, in declaration order."""
    return tuple(f.name for f in fields(cls))


def unknown_keys_error(owner: str, unknown: Any, valid: Any, noun: str = "option") -> ValueError:
    """The one message for an unknown option or key: who was asked, what was wrong, what is valid."""
    return ValueError(f"{owner}: unknown {noun}(s) {sorted(unknown)}; valid {noun}s: {', '.join(valid)}")


class Config:
    """Mixin for frozen config dataclasses: JSON-ready ``to_dict``, strict ``from_dict``, ``with_options``."""

    RENAMED: ClassVar[Mapping[str, str]] = {}   # key in manifests of older releases -> current field name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Rebuild from ``to_dict`` output; old key names map through ``RENAMED``, unknown keys raise ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        for old, new in cls.RENAMED.items():
            if old in data:
                if new in data and data[new] != data[old]:
                    raise ValueError(f"{cls.__name__}: both {old!r} (old name) and {new!r} are given")
                data.setdefault(new, data.pop(old))
                data.pop(old, None)
        valid = field_names(cls)
        unknown = set(data) - set(valid)
        if unknown:
            raise unknown_keys_error(cls.__name__, unknown, valid, noun="key")
        return cls(**data)

    def with_options(self: C, **options: Any) -> C:
        """A copy with some fields changed (validated again); unknown names raise ValueError."""
        unknown = set(options) - set(field_names(type(self)))
        if unknown:
            raise unknown_keys_error(type(self).__name__, unknown, field_names(type(self)))
        return replace(self, **options)  # type: ignore[type-var]


def check_type(owner: str, name: str, value: Any, kinds: tuple[type, ...], optional: bool = False) -> None:
    """Raise ValueError unless ``value`` is one of ``kinds`` (bools are not numbers here) or allowed None."""
    if value is None and optional:
        return
    is_bool = isinstance(value, bool)
    if not isinstance(value, kinds) or (is_bool and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds) + (" or None" if optional else "")
        raise ValueError(f"{owner}.{name} must be {names}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):   # NaN passes every range check after this
        raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")
