"""Connecting to Ray (an optional dependency, imported only here) and the resources a sharded build asks for."""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from retrieval.configs import Config, check_type
from retrieval.distributed.errors import ClusterError
from retrieval.errors import MissingDependency

logger = logging.getLogger(__name__)

LOCAL = "local"
LOOPBACK = "127.0.0.1"
ENCODE_BATCH = 8192   # = retrieval.dense.encoders.STREAM_BLOCK: the same blocks give the same vectors (tested)


def ray_module() -> Any:
    """The ``ray`` module, or an install hint."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependency("scale-out needs Ray: pip install 'retrievekit[ray]'") from exc
    return ray


@dataclass(frozen=True)
class ClusterConfig(Config):
    """Where a sharded index is built or served, and what each Ray actor or task reserves."""

    address: str = field(default=LOCAL, metadata={
        "help": "Ray cluster: 'local' (start or join Ray in this process), 'auto', HOST:PORT or ray://HOST:PORT"})
    shards: int = field(default=2, metadata={"help": "shards the collection is cut into (contiguous row ranges)"})
    encode_actors: int = field(default=1, metadata={"help": "encoding actors (each loads the model once)"})
    encode_cpus: float = field(default=1.0, metadata={"help": "CPUs per encoding actor (torch uses this many threads)"})
    encode_gpus: float = field(default=0.0, metadata={"help": "GPUs per encoding actor"})
    encode_batch: int = field(default=ENCODE_BATCH, metadata={
        "help": "documents per encoding batch (the single-process block size gives bit-identical vectors)"})
    shard_cpus: float = field(default=1.0, metadata={"help": "CPUs per shard-writing task and per shard actor"})
    max_restarts: int = field(default=1, metadata={"help": "restarts of a dead shard actor (from its folder)"})
    timeout_s: float | None = field(default=None, metadata={"help": "seconds a shard may take to answer a search"})

    def __post_init__(self) -> None:
        check_type("ClusterConfig", "address", self.address, (str,))
        for name in ("shards", "encode_actors", "encode_batch", "max_restarts"):
            check_type("ClusterConfig", name, getattr(self, name), (int,))
        for name in ("encode_cpus", "encode_gpus", "shard_cpus"):
            check_type("ClusterConfig", name, getattr(self, name), (int, float))
        check_type("ClusterConfig", "timeout_s", self.timeout_s, (int, float), optional=True)
        if not self.address:
            raise ValueError("ClusterConfig.address must not be empty; use 'local' for Ray on this machine")
        if self.shards < 1 or self.encode_actors < 1 or self.encode_batch < 1:
            raise ValueError(f"shards, encode_actors and encode_batch must be >= 1, got {self.shards}, "
                             f"{self.encode_actors}, {self.encode_batch}")
        if self.max_restarts < 0 or self.encode_cpus < 0 or self.encode_gpus < 0 or self.shard_cpus < 0:
            raise ValueError("max_restarts and the CPU/GPU counts must be >= 0")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


def cluster_config(cluster: ClusterConfig | str | None, **overrides: Any) -> ClusterConfig:
    """A :class:`ClusterConfig` from itself or an address; ``overrides`` that are not None replace fields."""
    if cluster is None or isinstance(cluster, str):
        config = ClusterConfig(address=cluster or LOCAL)
    elif isinstance(cluster, ClusterConfig):
        config = cluster
    else:
        raise TypeError(f"cluster must be a ClusterConfig or a Ray address, got {type(cluster).__name__}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return config.with_options(**given) if given else config


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at a ``HOST:PORT`` (or ``ray://HOST:PORT``) address.

    Ray itself retries a silent address for minutes before giving up; one TCP connection attempt tells at once.
    Other addresses (``auto``) are left to Ray, which answers them quickly.
    """
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host or LOOPBACK, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address!r} ({exc.strerror or exc}); start one with "
                           "`ray start --head`, or use cluster='local' to run Ray on this machine") from None


def connect(address: str = LOCAL) -> Any:
    """Ray, initialised: joined to the cluster at ``address``, or started here (on loopback) for ``'local'``.

    A Ray already initialised in this process is used as it is. No cluster answering raises
    :class:`ClusterError` with what to do.
    """
    ray = ray_module()
    if ray.is_initialized():
        return ray
    if address != LOCAL:
        check_reachable(address)
    try:
        if address == LOCAL:   # a cluster of this machine alone listens on loopback only
            ray.init(include_dashboard=False, logging_level=logging.WARNING, _node_ip_address=LOOPBACK)
        elif address.rsplit(":", 1)[0] in (LOOPBACK, "localhost"):
            ray.init(address=address, logging_level=logging.WARNING, _node_ip_address=LOOPBACK)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise ClusterError(f"no Ray cluster answers at {address!r} ({type(exc).__name__}: {str(exc)[:300]}); start "
                           "one with `ray start --head`, or use cluster='local' to run Ray on this machine") from None
    logger.info("connected to Ray at %s: %s", address, ray.cluster_resources())
    return ray
