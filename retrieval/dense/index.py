"""FAISS indexes for the dense stage: which index a name means for a collection size, and making one.

Indexes are chosen by name (``flat``, ``hnsw``, ``ivf``, ``ivfpq``, ``auto``) or by any FAISS factory string;
:class:`IndexConfig` records the choice and its search knobs. All indexes score by inner product and take
the dense stage's own int64 ids.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from retrieval.configs import Config, check_type
from retrieval.errors import MissingDependency

INDEX_NAMES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
AUTO_FLAT_MAX = 100_000      # exact search stays under ~20 ms/query up to here on 2 cores (384-d)
AUTO_HNSW_MAX = 5_000_000    # beyond this, HNSW's graph does not fit a laptop: compressed IVF-PQ


def faiss_module() -> Any:
    """The ``faiss`` module, or an install hint."""
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependency("dense retrieval needs FAISS: pip install faiss-cpu") from exc
    return faiss


KNOBS = ("nprobe", "ef_search", "ef_construction")


@dataclass(frozen=True)
class IndexConfig(Config):
    """The FAISS index of a dense stage: the name asked for, the factory string used, and search knobs.

    ``factory`` is left None when asking for an index: it is resolved from ``name`` and the collection size
    at build time (unset knobs get defaults for that size), and saved indexes always record it.
    """

    name: str = field(default="auto", metadata={
        "help": "FAISS index: flat, hnsw, ivf, ivfpq, auto or a factory string"})
    factory: str | None = None
    nprobe: int | None = field(default=None, metadata={"help": "IVF lists probed per query"})
    ef_search: int | None = field(default=None, metadata={"help": "HNSW search breadth"})
    ef_construction: int | None = field(default=None, metadata={"help": "HNSW build breadth"})

    def __post_init__(self) -> None:
        check_type("IndexConfig", "name", self.name, (str,))
        check_type("IndexConfig", "factory", self.factory, (str,), optional=True)
        if not self.name or self.factory == "":
            raise ValueError("IndexConfig.name and .factory must not be empty")
        for knob in KNOBS:
            value = getattr(self, knob)
            check_type("IndexConfig", knob, value, (int,), optional=True)
            if value is not None and value < 1:
                raise ValueError(f"IndexConfig.{knob} must be >= 1, got {value}")

    def knobs(self) -> dict[str, int]:
        """The search/build knobs that are set."""
        return {k: getattr(self, k) for k in KNOBS if getattr(self, k) is not None}


def ivf_lists(n: int) -> int:
    """IVF list count: ~4 sqrt(n), with at least 39 training points per list (FAISS's k-means minimum)."""
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // 39)))


def pq_shape(dim: int, n: int) -> tuple[int, int]:
    """PQ sub-quantisers (a divisor of dim near dim/8, i.e. 1 byte per 8 dims) and bits (2^bits <= n)."""
    m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    nbits = int(max(1, min(8, math.floor(math.log2(max(n, 2))))))
    return m, nbits


def resolve_index(index: IndexConfig | str, n: int, dim: int) -> IndexConfig:
    """Turn an index name (or a FAISS factory string) into a factory string with defaults for ``n`` docs.

    Knobs set on an :class:`IndexConfig` override those defaults; a config with a factory is kept as it is.
    """
    config = IndexConfig(name=index) if isinstance(index, str) else index
    if not isinstance(config, IndexConfig):
        raise ValueError(f"index must be an IndexConfig or a name, got {type(index).__name__}")
    if config.factory is not None:
        return config
    return replace(_default_index(config.name, n, dim), **config.knobs())


def _default_index(name: str, n: int, dim: int) -> IndexConfig:
    key = name.lower()
    if key == "auto":
        key = "flat" if n <= AUTO_FLAT_MAX else "hnsw" if n <= AUTO_HNSW_MAX else "ivfpq"
    if key == "flat":
        return IndexConfig(name=name, factory="Flat")
    if key == "hnsw":
        return IndexConfig(name=name, factory="HNSW32,Flat", ef_search=128, ef_construction=200)
    if key in ("ivf", "ivfpq"):
        if n < 2:
            raise ValueError(f"index={name!r} must be trained on documents; got {n}. Use index='flat' or 'hnsw'.")
        nlist = ivf_lists(n)
        if key == "ivf":
            return IndexConfig(name=name, factory=f"IVF{nlist},Flat", nprobe=min(nlist, 16))
        m, nbits = pq_shape(dim, n)
        # "np": skip polysemous training (minutes of annealing; it only helps Hamming-filtered search)
        return IndexConfig(name=name, factory=f"IVF{nlist},PQ{m}x{nbits}np", nprobe=min(nlist, 16))
    return IndexConfig(name=name, factory=name, nprobe=None, ef_search=None)


def new_index(config: IndexConfig, dim: int, train: np.ndarray) -> Any:
    """Create (and train if needed) an inner-product FAISS index that takes our own int64 ids."""
    faiss = faiss_module()
    try:
        index = faiss.index_factory(dim, config.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"index={config.name!r}: FAISS cannot build factory string {config.factory!r} ({exc})") from None
    if config.ef_construction is not None and hasattr(faiss.downcast_index(index), "hnsw"):
        faiss.downcast_index(index).hnsw.efConstruction = config.ef_construction
    if not index.is_trained:
        if len(train) == 0:
            raise ValueError(f"index {config.factory!r} must be trained; build it on at least some documents")
        index.train(np.ascontiguousarray(train, dtype=np.float32))
    if not _is_ivf(index):
        index = faiss.IndexIDMap2(index)   # IVF indexes store ids natively; the others get a translation layer
    set_search_params(index, config)
    return index


def _is_ivf(index: Any) -> bool:
    try:
        faiss_module().extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def set_search_params(index: Any, config: IndexConfig) -> None:
    """Apply the config's nprobe / efSearch to a FAISS index (inside an IDMap too)."""
    faiss = faiss_module()
    space = faiss.ParameterSpace()
    if config.nprobe is not None and _is_ivf(index):
        space.set_index_parameter(index, "nprobe", int(config.nprobe))
    if config.ef_search is not None:
        inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = int(config.ef_search)


@contextmanager
def single_query_threads(n_queries: int) -> Iterator[None]:
    """One OpenMP thread for a one-query search, restored after (this OS thread only: OpenMP's setting is per thread).

    FAISS searches one query on one thread anyway, but ``IndexIDMap`` translates its k labels in an OpenMP
    parallel loop; on a busy 2-core machine waking that team cost ~13 ms per query against 0.1 ms for the search.
    """
    if n_queries != 1:
        yield
        return
    faiss = faiss_module()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
