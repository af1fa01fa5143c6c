"""What the scale-out raises on purpose: no cluster to talk to, or a shard that cannot answer."""
from __future__ import annotations


class ClusterError(ConnectionError):
    """No Ray cluster answers at the address given (or Ray could not start one here)."""


class ShardError(RuntimeError):
    """A shard failed or died and could not be restarted; the message names the shard and its folder.

    A search never returns results with a shard silently missing: it raises this instead.
    """
