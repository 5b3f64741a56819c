"""Exact and near-duplicate detection for examples, in one streaming pass.

Exact: a hash of the text lower-cased with whitespace collapsed. Near: a MinHash signature of the
word 3-grams built with one-permutation hashing (one hash per 3-gram, the smallest kept in each of
``BUCKETS`` buckets), locality-sensitive banding to find candidates in constant time, and the
signature's estimate of Jaccard similarity to confirm them. State per kept example is a 128-byte
signature in one flat array plus up to 9 dictionary entries (under 1 KB), so memory grows with the
dataset, never with the table it is built from.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from array import array
from typing import Literal

BUCKETS = 32
BANDS = 8
ROWS = BUCKETS // BANDS
_EMPTY = 0xFFFFFFFF  # larger than any value: marks an empty bucket
_VALUE_BITS = 32 - (BUCKETS.bit_length() - 1)
_VALUE_MASK = (1 << _VALUE_BITS) - 1
_WORD = re.compile(r"\w+", re.UNICODE)

Verdict = tuple[Literal["exact", "near"], str, float]


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def signature(text: str) -> array:
    """One-permutation MinHash of the word 3-grams of ``text`` (texts under 3 words: the words)."""
    words = _WORD.findall(text.lower())
    if len(words) >= 3:
        grams = {f"{a} {b} {c}" for a, b, c in zip(words, words[1:], words[2:])}
    else:
        grams = {" ".join(words)}
    sig = array("I", [_EMPTY]) * BUCKETS
    for gram in grams:
        # CRC32 (C speed, stable across processes) spread by Fibonacci hashing; the top bits pick the bucket.
        h = (zlib.crc32(gram.encode()) * 0x9E3779B1) & 0xFFFFFFFF
        bucket, value = h >> _VALUE_BITS, h & _VALUE_MASK
        if value < sig[bucket]:
            sig[bucket] = value
    return sig


def similarity(a: array, b: array) -> float:
    """Estimated Jaccard similarity: agreeing buckets among those not empty in both."""
    agree = used = 0
    for x, y in zip(a, b):
        if x == _EMPTY and y == _EMPTY:
            continue
        used += 1
        agree += x == y
    return agree / used if used else 1.0


def _key(data: bytes) -> int:
    return (int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & 0x7FFFFFFFFFFFFFFF) or 1


class Deduplicator:
    """Remembers kept examples; :meth:`check` says whether a new one repeats one of them."""

    def __init__(self, near_threshold: float | None = 0.85) -> None:
        self.near_threshold = near_threshold
        self._exact: dict[int, int] = {}  # 64-bit hash of the normalised text -> example number
        self._bands: dict[int, int] = {}  # band key -> first example number with that band
        self._signatures = array("I")  # BUCKETS values per kept example, back to back
        self._ids: list[str] = []

    def check(self, item_id: str, text: str) -> Verdict | None:
        """None when ``text`` is new (and is then remembered), else (kind, id of the earlier example, similarity)."""
        key = _key(normalise(text).encode())
        earlier = self._exact.get(key)
        if earlier is not None:
            return ("exact", self._ids[earlier], 1.0)
        idx = len(self._ids)
        if self.near_threshold is None:
            self._exact.setdefault(key, idx)
            self._ids.append(item_id)
            return None
        sig = signature(text)
        band_keys = []
        for b in range(BANDS):
            part = sig[b * ROWS : (b + 1) * ROWS]
            if all(v == _EMPTY for v in part):
                continue  # an empty band matches every short text; it proves nothing
            band_keys.append((hash((b, part.tobytes())) & 0x7FFFFFFFFFFFFFFF) or 1)
        seen: set[int] = set()
        for bk in band_keys:
            other = self._bands.get(bk)
            if other is None or other in seen:
                continue
            seen.add(other)
            sim = similarity(sig, self._signatures[other * BUCKETS : (other + 1) * BUCKETS])
            if sim >= self.near_threshold:
                return ("near", self._ids[other], round(sim, 3))
        self._exact.setdefault(key, idx)
        self._ids.append(item_id)
        self._signatures.extend(sig)
        for bk in band_keys:
            self._bands.setdefault(bk, idx)
        return None
