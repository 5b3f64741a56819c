"""Record ids: time-ordered (UUID version 7 layout), as 32 hex digits."""

from __future__ import annotations

import time
from random import getrandbits

_VERSION_AND_VARIANT = (0x7 << 76) | (0x2 << 62)
_RAND_A = 0xFFF << 64
_RAND_B = (1 << 62) - 1


def new_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: 48 bits of Unix time in milliseconds, then 74 random bits.

    Time first, because ids are primary keys: new rows land at the right edge of the id and
    idempotency-key indexes instead of at random pages, so an insert costs the same on a table
    of millions of rows as on an empty one (random v4 ids made SQLite inserts 3x slower by 100k
    rows, measured). Ids also sort in recording order.

    The random bits come from ``random`` rather than ``os.urandom``: a syscall releases the GIL,
    and the app thread then waits for the busy writer threads to hand it back (measured: ~100 µs
    a call). The module-level generator is seeded from urandom and reseeded after fork; 74
    random bits per millisecond make collisions negligible. Ids are keys, not secrets.
    """
    rand = getrandbits(128)
    value = (time.time_ns() // 1_000_000) << 80 | _VERSION_AND_VARIANT | (rand & _RAND_A) | (rand & _RAND_B)
    return f"{value:032x}"


# Row ids (jobs, evaluations, datasets) fit PostgreSQL's integer: a larger one is refused naming the
# parameter, never sent to a driver (SQLite raised OverflowError past 2**63, PostgreSQL a 22003).
ROW_ID_MAX = 2**31 - 1
