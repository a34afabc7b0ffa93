"""Counters of what a client did, read with :meth:`Client.stats <lightbulb_client.Client.stats>`.

Plain integers: the library forces no metrics system on its users; export :class:`Stats`
to whatever the service uses.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    """A snapshot of a client's counters, all monotonic since the client was made.

    Attributes:
        hits: resolutions answered from the local cache, without an RPC.
        misses: resolutions that went to Lightbulb (the cache had no live entry).
        coalesced: misses that did not make their own RPC but waited for the one already
            in flight for the same context (included in ``misses``).
        rpcs: RPC attempts made (a miss makes one, plus one per retry).
        retries: retries after a retryable failure (attempts beyond the first).
        last_known_good: misses answered with the last known good answer because
            Lightbulb was unavailable.
        static_defaults: misses answered with the objective's static default because
            Lightbulb was unavailable and never answered the context.
        errors: resolutions that raised an error.
    """

    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    rpcs: int = 0
    retries: int = 0
    last_known_good: int = 0
    static_defaults: int = 0
    errors: int = 0
