"""``retrieval train OBJECTIVE ...`` (or ``python -m training OBJECTIVE ...``), generated from the configs.

One sub-command per entry of :data:`training.registry.OBJECTIVES`, one flag per field of its config class:
the field name with dashes (``max_steps`` -> ``--max-steps``), its type, default, choices and the help text
of its metadata. Booleans that are on by default get ``--flag/--no-flag``. Old names a config lists in
``RENAMED`` stay accepted as hidden, deprecated flags. Importing this module is cheap (no torch); the heavy
imports happen when the command runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any

import training.chain as chain_module
from training.config import RunConfig, field_kinds
from training.registry import OBJECTIVES

logger = logging.getLogger(__name__)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a config field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _declared_by(cls: type, name: str) -> type:
    """The most basic class of ``cls``'s hierarchy that declares field ``name`` (it titles the help group)."""
    return next(k for k in reversed(cls.__mro__) if name in k.__dict__.get("__annotations__", {}))


def _help(cls: type[RunConfig], f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    default = cls.DEFAULTS.get(f.name) if f.default in (None, dataclasses.MISSING) else f.default
    return text if default is None or isinstance(default, bool) else f"{text} (default: {default})"


def _deprecated(preferred: str) -> type[argparse.Action]:
    class Deprecated(argparse.Action):
        def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
            logger.warning("%s is deprecated; use %s", option_string, preferred)
            setattr(namespace, self.dest, values)
    return Deprecated


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[RunConfig]) -> None:
    """One flag per field of ``cls`` (grouped by the class that declares it) plus its deprecated aliases."""
    hints = typing.get_type_hints(cls)
    groups: dict[type, Any] = {}
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for f in by_name.values():
        owner = _declared_by(cls, f.name)
        if owner not in groups:
            groups[owner] = parser.add_argument_group(f"{owner.__name__}", (owner.__doc__ or "").splitlines()[0])
        kind = field_kinds(hints[f.name])[0][0]
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        if kind is bool:
            action = argparse.BooleanOptionalAction if default else "store_true"
            groups[owner].add_argument(flag_of(f), dest=f.name, action=action, default=default, help=_help(cls, f))
            continue
        aliased = f.name in cls.RENAMED.values()
        groups[owner].add_argument(flag_of(f), dest=f.name, type=kind, default=default, choices=f.metadata.get("choices"),
                                   required=required and not aliased, help=_help(cls, f))
    for old, new in cls.RENAMED.items():
        parser.add_argument("--" + old.replace("_", "-"), dest=new, type=field_kinds(hints[new])[0][0],
                            action=_deprecated(flag_of(by_name[new])), help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The config the parsed flags describe (``args.config_class`` says which); other attributes are ignored."""
    cls: type[RunConfig] = args.config_class
    fields = dataclasses.fields(cls)
    missing = [flag_of(f) for f in fields if f.default is dataclasses.MISSING and getattr(args, f.name) is None]
    if missing:
        raise ValueError(f"the following arguments are required: {', '.join(missing)}")
    return cls(**{f.name: getattr(args, f.name) for f in fields})


def _report(folder: Path, metrics: dict[str, Any]) -> None:
    print(f"model: {folder}")
    losses = metrics.get("losses") or []
    steps = f"steps: {metrics['steps']}  ({metrics.get('steps_per_second') or 0:.2f} steps/s)"
    print(f"{steps}  final loss {losses[-1]:.4f}" if losses else steps)
    for when in ("before", "after"):
        if metrics.get(when):
            print(f"{when:>6}: nDCG@10 {metrics[when]['nDCG@10']:.4f}  Recall@100 {metrics[when]['Recall@100']:.4f}")
    if metrics.get("after_vs_before"):
        print(f"change: nDCG@10 {metrics['after_vs_before']['mean_diff']:+.4f}  "
              f"(paired randomisation p = {metrics['after_vs_before']['p_value']:.4f})")


def cmd_train(args: argparse.Namespace) -> int:
    """Run the objective the command line names and print where the model went and how it did."""
    config = config_from_args(args)
    from training.trainer import run

    folder = run(config)
    _report(folder, json.loads((Path(config.out) / "metrics.json").read_text(encoding="utf-8")))
    return 0


def cmd_chain(args: argparse.Namespace) -> int:
    """Run a chain file's steps in order (each from the previous step's model) and print each step's result."""
    configs, out = chain_module.load_chain(args.spec)
    for folder, config in zip(chain_module.run_chain(configs, out), configs):
        print(f"step {config.out}:")
        _report(folder, json.loads((Path(config.out) / "metrics.json").read_text(encoding="utf-8")))
    print(f"summary: {out / 'chain.json'}")
    return 0


def add_objective_commands(parser: argparse.ArgumentParser) -> None:
    """One sub-command per registered objective, its flags generated from its config class; and ``chain``."""
    objectives = parser.add_subparsers(dest="objective", required=True)
    for name, entry in OBJECTIVES.items():
        p = objectives.add_parser(name, help=entry.summary, description=entry.config.__doc__)
        add_config_arguments(p, entry.config)
        p.set_defaults(func=cmd_train, config_class=entry.config)
    chain = objectives.add_parser("chain", help="run training steps in order, each from the model the last one saved "
                                                "(e.g. tsdae then supervised); rerun to resume",
                                  description=(chain_module.__doc__ or "").split("\n\n")[0])
    chain.add_argument("spec", help="chain JSON: {\"out\": OUT, \"base\": BASE, \"steps\": [{\"objective\": NAME, ...}]}")
    chain.set_defaults(func=cmd_chain)


def add_train_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` with one sub-command per objective (``retrieval.cli`` composes it into ``retrieval``)."""
    train = subparsers.add_parser("train", help=f"train or adapt a model ({', '.join(OBJECTIVES)})",
                                  description="Adapt an embedder to a corpus, or fine-tune a reranker; "
                                              "writes OUT/config.json, checkpoints and OUT/model.")
    add_objective_commands(train)
    return train


def main(argv: list[str] | None = None) -> int:
    """``python -m training OBJECTIVE [flags]``: the same command as ``retrieval train``."""
    from retrieval.errors import MissingDependency

    parser = argparse.ArgumentParser(prog="python -m training", description=add_train_command.__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    add_objective_commands(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError, MissingDependency) as exc:
        print(f"python -m training {args.objective}: error: {exc}", file=sys.stderr)
        return 2
