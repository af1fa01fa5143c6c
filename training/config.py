"""Training configs: one frozen, validated dataclass per objective, on a shared base of run settings.

Every field is declared once, with its default, its help text, its allowed values and its bounds in the
field's metadata; validation, ``to_dict``/``from_dict`` and the ``retrieval train`` flags
(:mod:`training.cli`) are all derived from the declarations. The hierarchy::

    RunConfig                where the result goes, the base model, seed, optimisation schedule,
    │                        checkpoints, before/after evaluation, device, progress
    ├── EmbedderConfig       a bi-encoder being trained: its pooling
    │   └── CorpusConfig     ... on an unlabeled corpus: corpus, sentence filters
    │       └── TSDAEConfig, SimCSEConfig, CTConfig, PairsConfig, GPLConfig
    └── CrossEncoderConfig   a reranker trained on a labeled BEIR split with mined hard negatives

Objectives are named in one place, :data:`training.registry.OBJECTIVES`. A new one is a config class
here, a module beside the others (``training_items``, ``build``, ``MODEL``: see
:class:`training.objective.ObjectiveModule`) and its row in ``OBJECTIVES``; the CLI, the run folder's
``config.json``, checkpoints, resume and evaluation come from the shared code. Supervised fine-tuning
would be an ``EmbedderConfig`` with a BEIR ``data``/``split`` (as the cross-encoder has), GPL a
``CorpusConfig`` with its generator, miner and teacher.

``lr`` and ``batch_size`` left at ``None`` become the objective's own defaults (from its paper) when the
config is built, so ``config.lr`` is always the learning rate that is used and ``config.json`` says so.
"""
from __future__ import annotations

import dataclasses
import operator
import typing
from pathlib import Path
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from retrieval.configs import Config, check_type
from retrieval.models import DEFAULT_EMBEDDER
from retrieval.rerank.llm.gguf_convert import TARGETS as GGUF_TARGETS

from training.gpl.extract import extract_mode
from training.noise import NOISE_KINDS, NoiseConfig

PAIR_SOURCES = ("title-body", "ict")
CT_VARIANTS = ("in-batch", "original")
POOLINGS = ("auto", "cls", "mean", "max")
CE_LOSSES = ("listwise", "bce")
NEGATIVE_SOURCES = ("bm25", "dense", "both")   # first stages that mine hard negatives (training.negatives)
GENERATOR_KINDS = ("llm", "llama-cpp", "seq2seq", "extract")   # GPL query generators (training.gpl.generate)


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple[Any, ...] | None = None,
           min: float | None = None, max: float | None = None, above: float | None = None,
           below: float | None = None, runtime: bool = False, flag: str | None = None) -> Any:
    """A config field with its metadata: ``help`` and ``choices`` (also the CLI's), bounds checked on
    construction (``min`` <= value <= ``max``, ``above`` < value < ``below``), ``runtime`` for settings a
    resumed run may change (they do not change what is trained), ``flag`` for a CLI name other than the field's."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "above": above, "below": below,
            "runtime": runtime, "flag": flag}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None and v is not False})


# metadata key -> (the test a value must pass, how the error states it)
_BOUNDS = {"min": (operator.ge, ">="), "max": (operator.le, "<="), "above": (operator.gt, ">"),
           "below": (operator.lt, "<")}


def field_kinds(hint: Any) -> tuple[tuple[type, ...], bool]:
    """The scalar types a hint allows and whether it allows None (``int | None`` -> ((int,), True))."""
    args = typing.get_args(hint) or (hint,)
    return tuple(a for a in args if a is not type(None)), type(None) in args


@dataclass(frozen=True, kw_only=True)
class RunConfig(Config):
    """Settings every training run shares: output, base model, schedule, checkpoints, evaluation, device."""

    DEFAULTS: ClassVar[Mapping[str, Any]] = {"lr": 2e-5, "batch_size": 32}  # sentence-transformers' defaults
    RENAMED: ClassVar[Mapping[str, str]] = {}

    out: str = option(help="run folder: config.json, checkpoints/, metrics.json, and the result in OUT/model")
    base: str = option(DEFAULT_EMBEDDER, f"model to start from: alias ({DEFAULT_EMBEDDER}), local folder or hub name")
    seed: int = option(42, "seed of batch order, noise, sampling and dropout")
    lr: float | None = option(None, "peak learning rate", above=0)
    batch_size: int | None = option(None, "training rows per optimizer step", min=1)
    epochs: int = option(1, "passes over the training items (unless --max-steps)", min=1)
    max_steps: int | None = option(None, "stop after N optimizer steps (default: --epochs passes)", min=1)
    warmup_ratio: float = option(0.1, "share of the steps with linear warmup (then linear decay to 0)", min=0, below=1)
    weight_decay: float = option(0.01, "AdamW weight decay", min=0)
    max_grad_norm: float = option(1.0, "gradient-norm clip", above=0)
    max_seq_length: int = option(128, "training length in tokens", min=2)
    bf16: bool = option(False, "mixed precision: forward passes under bfloat16 autocast, weights and optimizer in "
                        "float32; about 1.6x faster steps on CPUs with AMX or AVX512-BF16 (and on recent GPUs)")
    checkpoint_every: int = option(500, "steps between checkpoints (OUT/checkpoints/step-N)", min=1, runtime=True)
    keep_checkpoints: int = option(2, "newest checkpoints kept; an unreadable newest falls back to the one before",
                                   min=1, runtime=True)
    resume: bool = option(False, "continue OUT from its newest readable checkpoint", runtime=True)
    eval_beir: str | None = option(None, "BEIR folder: evaluate before and after training", runtime=True)
    eval_split: str = option("test", "split of --eval-beir", runtime=True)
    eval_max_seq_length: int = option(256, "evaluation length in tokens", min=2, runtime=True)
    eval_batch_size: int = option(32, "evaluation batch size", min=1, runtime=True)
    eval_cache_dir: str | None = option(None, "cache the base model's corpus embeddings here (bi-encoders)",
                                        runtime=True)
    device: str | None = option(None, "cpu, cuda, ... (default: cuda when available)", runtime=True)
    threads: int | None = option(None, "torch CPU threads (default: torch's; 1 is fastest on a busy machine)",
                                 min=1, runtime=True)
    show_progress: bool = option(True, "progress bars", runtime=True, flag="--progress")

    def __post_init__(self) -> None:
        for name, value in self.resolved_defaults().items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            self._check_field(f, hints[f.name])
        self.validate()

    def resolved_defaults(self) -> Mapping[str, Any]:
        """What ``None`` fields become (``lr``, ``batch_size``): the class's :attr:`DEFAULTS`."""
        return self.DEFAULTS

    def evaluates_on(self, folder: str | None, split: str) -> bool:
        """Whether ``--eval-beir``/``--eval-split`` name this BEIR folder and split (data there must not train)."""
        return folder is not None and self.eval_beir is not None and self.eval_split == split and \
            Path(self.eval_beir).resolve() == Path(folder).resolve()

    def validate(self) -> None:
        """Checks that involve more than one field (subclasses extend it)."""
        if not self.out.strip():
            raise ValueError(f"{type(self).__name__}.out must name a folder")

    def _check_field(self, f: dataclasses.Field, hint: Any) -> None:
        owner, value = f"{type(self).__name__}.{f.name}", getattr(self, f.name)
        kinds, optional = field_kinds(hint)
        if value is None and optional:
            return
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(self, f.name, value)
        check_type(type(self).__name__, f.name, value, kinds, optional)   # the type, and a finite float
        meta = f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            raise ValueError(f"{owner} must be one of {meta['choices']}, got {value!r}")
        for key, (holds, sign) in _BOUNDS.items():
            if key in meta and not holds(value, meta[key]):
                raise ValueError(f"{owner} must be {sign} {meta[key]}, got {value!r}")

    @classmethod
    def runtime_fields(cls) -> frozenset[str]:
        """Fields a resumed run may change: they do not change what is trained."""
        return frozenset(f.name for f in fields(cls) if f.metadata.get("runtime"))

    def items_per_step(self) -> int:
        """Training items per optimizer step (an item is a sentence, a document, a group...)."""
        return int(self.batch_size or 0)  # never None: resolved in __post_init__


@dataclass(frozen=True, kw_only=True)
class EmbedderConfig(RunConfig):
    """A sentence-transformers embedder (bi-encoder) being trained: how its vector is pooled."""

    PLAIN_POOLING: ClassVar[str] = "mean"  # pooling "auto" gives a plain transformers encoder this

    pooling: str = option("auto", "auto keeps a sentence-transformers base's pooling; a plain encoder gets the "
                          "objective's (cls for TSDAE, else mean)", choices=POOLINGS)


@dataclass(frozen=True, kw_only=True)
class CorpusConfig(EmbedderConfig):
    """An embedder trained on an unlabeled corpus (sentences or documents); no queries, no judgments."""

    corpus: str = option(help="BEIR folder, JSONL/CSV/TSV file, or .txt (one document a line)")
    min_words: int = option(5, "shortest usable sentence (or document text), in words", min=1)
    max_words: int = option(64, "longer sentences are cut into windows of this many words", min=1)
    max_sentences: int | None = option(None, "use only the first N unique sentences (pairs: documents)", min=1)

    def validate(self) -> None:
        super().validate()
        if self.max_words < self.min_words:
            raise ValueError(f"{type(self).__name__}: max_words ({self.max_words}) < min_words ({self.min_words})")


@dataclass(frozen=True, kw_only=True)
class TSDAEConfig(CorpusConfig):
    """TSDAE (Wang, Reimers & Gurevych, EMNLP 2021): rebuild a sentence from a noisy copy's vector."""

    DEFAULTS: ClassVar[Mapping[str, Any]] = {"lr": 3e-5, "batch_size": 8}  # the paper's
    PLAIN_POOLING: ClassVar[str] = "cls"  # as in the paper

    noise: str = option("delete", "noise applied to the input sentence", choices=NOISE_KINDS)
    noise_ratio: float = option(0.6, "share of words deleted, swapped or masked", min=0, max=1)
    noise_unit: str = option("word", "noise unit: regex words, or the tokenizer's whole words", choices=("word", "token"))
    tie_weights: bool = option(True, "share the encoder's weights with the decoder")

    def noise_config(self) -> NoiseConfig:
        return NoiseConfig(kind=self.noise, ratio=self.noise_ratio, unit=self.noise_unit)


@dataclass(frozen=True, kw_only=True)
class SimCSEConfig(CorpusConfig):
    """Unsupervised SimCSE (Gao, Yao & Chen, EMNLP 2021): a sentence and itself through dropout."""

    DEFAULTS: ClassVar[Mapping[str, Any]] = {"lr": 3e-5, "batch_size": 64}  # the paper's, BERT-base

    temperature: float = option(0.05, "softmax temperature of the in-batch contrastive loss", above=0)


@dataclass(frozen=True, kw_only=True)
class CTConfig(CorpusConfig):
    """Contrastive Tension (Carlsson et al., ICLR 2021): two encoder copies agree on identical inputs.

    Default lr and batch size depend on ``variant``: in-batch 5e-5 and 32 (sentence-transformers' example),
    original 1e-5 and 16 (the paper). They are fixed when the config is built: ``dataclasses.replace`` of
    ``variant`` keeps the other variant's lr and batch size.
    """

    DEFAULTS: ClassVar[Mapping[str, Any]] = {"lr": 5e-5, "batch_size": 32}
    ORIGINAL_DEFAULTS: ClassVar[Mapping[str, Any]] = {"lr": 1e-5, "batch_size": 16}
    RENAMED: ClassVar[Mapping[str, str]] = {"ct_variant": "variant"}

    variant: str = option("in-batch", "in-batch negatives, or the paper's labelled pairs", choices=CT_VARIANTS)
    pos_neg_ratio: int = option(8, "original variant: one identical pair for every N pairs", min=1)

    def resolved_defaults(self) -> Mapping[str, Any]:
        return self.ORIGINAL_DEFAULTS if self.variant == "original" else self.DEFAULTS


@dataclass(frozen=True, kw_only=True)
class PairsConfig(CorpusConfig):
    """(anchor, passage) pairs cut from the corpus, with in-batch negatives (the base's own objective)."""

    pair_source: str = option("title-body", "anchor -> passage: a title -> its text, or a sentence -> the rest "
                              "of its document (ICT)", choices=PAIR_SOURCES)


@dataclass(frozen=True, kw_only=True)
class CrossEncoderConfig(RunConfig):
    """A cross-encoder reranker fine-tuned on a BEIR split, each positive with BM25-mined hard negatives."""

    DEFAULTS: ClassVar[Mapping[str, Any]] = {"lr": 5e-5, "batch_size": 32}
    RENAMED: ClassVar[Mapping[str, str]] = {"output": "out", "base_model": "base", "learning_rate": "lr"}

    data: str = option(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    split: str = option("train", "judged split to train on")
    max_queries: int | None = option(None, "use only the first N queries of the split", min=1)
    loss: str = option("listwise", "listwise: softmax over 1 positive + negatives; bce: pointwise", choices=CE_LOSSES)
    num_negatives: int = option(7, "hard negatives per (query, positive)", min=1)
    negatives_depth: int = option(30, "negatives are sampled from the BM25 top-N", min=1)
    eval_depth: int = option(100, "evaluation: BM25 candidates the cross-encoder reranks", min=1, runtime=True)
    max_seq_length: int = option(256, "query + passage length in tokens", min=2)
    # batch_size counts (query, passage) pairs for both losses, so a step costs the same

    def items_per_step(self) -> int:
        """Listwise steps take whole groups of 1 + ``num_negatives`` pairs; bce steps take pairs."""
        if self.loss == "listwise":
            return max(1, int(self.batch_size or 0) // (1 + self.num_negatives))
        return int(self.batch_size or 0)


@dataclass(frozen=True, kw_only=True)
class SupervisedConfig(EmbedderConfig):
    """A bi-encoder fine-tuned on judged (query, positive) pairs of a BEIR split: in-batch negatives plus mined
    hard negatives (``MultipleNegativesRankingLoss``, the loss all-MiniLM-L6-v2 was trained with)."""

    data: str = option(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    split: str = option("train", "judged split to train on (never the evaluation split)")
    max_queries: int | None = option(None, "use only the first N queries of the split", min=1)
    num_negatives: int = option(1, "mined hard negatives per (query, positive), besides the in-batch ones", min=0)
    negatives_depth: int = option(30, "hard negatives are sampled from the first stage's top-N", min=1)
    negatives_from: str = option("bm25", "first stage that mines them: bm25, dense (the base model) or both",
                                 choices=NEGATIVE_SOURCES)
    scale: float = option(20.0, "similarity scale of the in-batch softmax (sentence-transformers' default)", above=0)
    max_seq_length: int = option(256, "query and passage length in tokens", min=2)

    def validate(self) -> None:
        super().validate()
        if self.evaluates_on(self.data, self.split):
            raise ValueError(f"SupervisedConfig: evaluating on the training split {self.split!r} of {self.data}; "
                             "evaluate on another split (--eval-split test)")


def _spec_parts(owner: str, spec: str, kinds: tuple[str, ...], example: str) -> tuple[str, str]:
    """``KIND:MODEL`` split once at the first ``:``; ValueError unless KIND is one of ``kinds`` and MODEL is given."""
    kind, _, model = spec.partition(":")
    if kind not in kinds or not model.strip():
        raise ValueError(f"{owner} must be {' or '.join(k + ':MODEL' for k in kinds)} (e.g. {example}), got {spec!r}")
    return kind, model


@dataclass(frozen=True, kw_only=True)
class GPLConfig(CorpusConfig):
    """GPL (Wang et al., NAACL 2022): generated queries, mined hard negatives, cross-encoder margins, MarginMSE."""

    DEFAULTS: ClassVar[Mapping[str, Any]] = {"lr": 2e-5, "batch_size": 32}  # the paper's

    max_words: int = option(200, "the generator reads the first N words of each document (title and text)", min=1)
    max_sentences: int | None = option(None, "generate queries for the first N usable documents only "
                                       "(negatives still come from the whole corpus)", min=1)
    queries_from: str | None = option(None, "real queries instead of generated ones: a BEIR folder whose "
                                      "--queries-split queries each train with their first judged document as the "
                                      "source, e.g. a query log with clicked documents (skips generation and its "
                                      "filter; the teacher still labels every pair)")
    queries_split: str = option("train", "with --queries-from: the split (never the evaluation split)")
    generator: str = option("llama-cpp:smollm2", "query generator: llama-cpp:GGUF_OR_ALIAS, llm:MODEL (transformers, "
                            "or llm:http://HOST:PORT/v1#NAME for an OpenAI-compatible server), seq2seq:FOLDER "
                            "(a doc2query T5), or extract:title|last|sentence (no model: the title, last or a "
                            "random sentence is cut out of each document as its one query, inverse-cloze style)")
    generator_convert: str = option("f16", "llama-cpp generators run a re-typed copy of the GGUF, cached once (f16 "
                                    "takes the fast AVX2 kernels and avoids a crash of llama-cpp-python 0.3.36 on "
                                    "the bundled Q4_1 file); none runs the file as shipped",
                                    choices=("none", *GGUF_TARGETS))
    generator_buffers: str = option("extra", "llama-cpp generators: extra keeps llama.cpp's AMX/repacked weight "
                                    "buffers; plain runs quantised weights on the generic CPU kernels, which do not "
                                    "crash on AMX CPUs and generate faster than F16 there (use with q8_0 or none)",
                                    choices=("extra", "plain"))
    generator_dtype: str | None = option(None, "llm: generators run by transformers: weights type (bfloat16 "
                                         "runs about 3x faster on CPUs with AMX or AVX512-BF16; default: as loaded)",
                                         choices=("float32", "bfloat16", "float16"))
    generator_batch_size: int = option(16, "llm: generators run by transformers: prompts generated together (the "
                                       "prompts of one cached chunk, --chunk-size documents x --queries-per-doc)",
                                       min=1)
    generator_examples: str | None = option(None, "worked examples shown to a chat generator before each passage "
                                            "(few-shot, as InPars and Promptagator): a BEIR folder (the judged "
                                            "queries of --generator-examples-split with their first positive) or "
                                            "a JSONL file of {\"query\", \"passage\"} rows. Their queries never "
                                            "reach training (default: zero-shot instructions)")
    generator_examples_split: str = option("train", "with a BEIR --generator-examples: its split (never the "
                                           "evaluation split)")
    generator_shots: int = option(3, "worked examples per prompt; each of a document's queries gets its own set",
                                  min=1)
    example_words: int = option(60, "worked examples show the first N words of their passage", min=1)
    queries_per_doc: int = option(3, "queries generated per document (before filtering; extract: generators cut "
                                  "one)", min=1)
    max_query_tokens: int = option(48, "longest generated query, in tokens", min=1)
    copy_threshold: float = option(0.75, "drop a query when this share of its word trigrams occurs in its "
                                   "document (a near-copy; 1.0 drops only verbatim copies)", above=0, max=1)
    negatives_from: str = option("both", "first stage that mines negatives: bm25, dense (the base model) or both",
                                 choices=NEGATIVE_SOURCES)
    num_negatives: int = option(3, "hard negatives per generated query; each makes one training triple", min=1)
    negatives_depth: int = option(50, "negatives are sampled from the first stage's top-N (never the query's "
                                  "own document)", min=1)
    cross_encoder: str = option(help="teacher that labels the margins: cross-encoder:FOLDER_OR_NAME (e.g. "
                                "OUT/model of retrieval train cross-encoder)")
    teacher_interpolate: float | None = option(None, "fuse the teacher with BM25 as a reranker with interpolate=W "
                                               "does: per query, W*minmax(CE) + (1-W)*minmax(BM25) over BM25's top "
                                               "--teacher-depth plus the positive and negatives; the margins are "
                                               "differences of those fused scores (default: raw CE logits)",
                                               min=0, max=1)
    teacher_depth: int = option(50, "with --teacher-interpolate: BM25's top-N per query, over which both scores are "
                                "min-max normalised (the teacher scores each of them)", min=1)
    consistency_depth: int | None = option(None, "round-trip filter (Promptagator): train only on queries whose "
                                           "source document the teacher ranks within its top N among all it "
                                           "scored for the query (BM25's top --teacher-depth with "
                                           "--teacher-interpolate, else the positive and its negatives)", min=1)
    label_batch_size: int = option(32, "(query, passage) pairs per teacher call", min=1)
    label_max_seq_length: int = option(256, "teacher input length in tokens", min=2)
    scale: float = option(1.0, "the student's score margin is multiplied by this before the MSE (1: MarginMSE)",
                          above=0)
    fit_scale: bool = option(False, "choose --scale before training: the least-squares fit of the base model's "
                             "margins to the teacher's on up to 1,000 training triples (a cosine student's margins "
                             "are far smaller than a cross-encoder's logits)")
    chunk_size: int = option(64, "documents (generation) or queries (labelling) per cached chunk; a killed run "
                             "resumes after the last whole chunk", min=1, runtime=True)
    max_seq_length: int = option(256, "query and passage length in tokens", min=2)

    def validate(self) -> None:
        super().validate()
        _spec_parts(f"{type(self).__name__}.generator", self.generator, GENERATOR_KINDS, "llama-cpp:smollm2")
        _spec_parts(f"{type(self).__name__}.cross_encoder", self.cross_encoder, ("cross-encoder",),
                    "cross-encoder:runs/ce/model")
        if self.fit_scale and self.scale != 1.0:
            raise ValueError(f"{type(self).__name__}: give scale or fit_scale, not both (scale={self.scale})")
        if self.queries_from is not None and self.generator_examples is not None:
            raise ValueError(f"{type(self).__name__}: --queries-from replaces generation; drop --generator-examples")
        if self.queries_from is not None and self.generator.startswith("extract:"):
            raise ValueError(f"{type(self).__name__}: --queries-from replaces generation; drop --generator "
                             f"{self.generator}")
        if self.evaluates_on(self.queries_from, self.queries_split):
            raise ValueError(f"{type(self).__name__}: --queries-from takes the evaluation split {self.eval_split!r} "
                             f"of {self.eval_beir}; train on another split (--queries-split train)")
        if self.generator.startswith("extract:"):
            extract_mode(self.generator)
        if self.generator_examples is not None:
            if self.generator.startswith(("seq2seq:", "extract:")):
                raise ValueError(f"{type(self).__name__}: {self.generator.partition(':')[0]} generators take no "
                                 "generator_examples")
            if self.evaluates_on(self.generator_examples, self.generator_examples_split):
                raise ValueError(f"{type(self).__name__}: the generator's examples come from the evaluation split "
                                 f"{self.eval_split!r} of {self.eval_beir}; take them from another split "
                                 "(--generator-examples-split train)")
