"""Bounded per-process caches of values read off the wire.

Runs in: every process that parses SIP (receivers, task workers, timers).

The parser and the URI layer remember what they checked once (a Request-Line,
a CSeq value, a Via sent-by, a name-addr, a URI): the same texts come back
message after message. The wire must not grow a cache forever, so each is
emptied when it reaches its limit; the callers also refuse keys longer than
they are worth keeping.
"""


def remember(cache, key, value, limit):
    """cache[key] = value, the cache emptied first once it holds `limit` entries."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
