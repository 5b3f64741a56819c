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
from collections.abc import Sequence
from itertools import chain
from typing import Literal

import numpy as np

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


# Every ASCII character \w does not match, as a space: for ASCII text, translate + split gives the
# words of the regex several times faster (the regex was the largest cost left in a build).
_ASCII_NON_WORD = str.maketrans({chr(c): " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")})


def _words(text: str) -> list[str]:
    """The \\w+ words of ``text``, lower-cased."""
    low = text.lower()
    if low.isascii():
        return low.translate(_ASCII_NON_WORD).split()
    return _WORD.findall(low)


class _WordHashes(dict[str, int]):
    """word -> CRC32 of it, computed once per distinct word (C speed, stable across processes)."""

    def __missing__(self, word: str) -> int:
        if len(self) >= 500_000:  # a bound on memory for corpora with endless distinct tokens
            self.clear()
        h = self[word] = zlib.crc32(word.encode())
        return h


_WORD_HASHES = _WordHashes()
_U64 = np.uint64
# Odd 64-bit multipliers: a word 3-gram hashes to a*P1 + b*P2 + c*P3 (mod 2^64), then Fibonacci-mixed.
_P1, _P2, _P3, _MIX = (
    _U64(0x9E3779B97F4A7C15),
    _U64(0xC2B2AE3D27D4EB4F),
    _U64(0x165667B19E3779F9),
    _U64(0xD6E8FEB86659FD93),
)
_BAND_MULTS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5], dtype=np.uint64
)


def signatures(texts: Sequence[str]) -> tuple[np.ndarray, list[list[int]]]:
    """One-permutation MinHash signatures of the word 3-grams of many texts at once (texts under
    3 words: one gram of their words), and each text's LSH band keys (empty bands left out).

    Batched because per-gram Python work was half of a dataset build: words are hashed once each
    (cached), grams, buckets and minima are array operations over the whole batch.
    Returns (signatures of shape (len(texts), BUCKETS), band keys per text).
    """
    n = len(texts)
    per_text = [list(map(_WORD_HASHES.__getitem__, _words(t))) for t in texts]
    lengths = np.fromiter(map(len, per_text), dtype=np.int64, count=n)
    words = np.fromiter(chain.from_iterable(per_text), dtype=np.uint64, count=int(lengths.sum()))
    ends = np.cumsum(lengths)
    owner = np.repeat(np.arange(n), lengths)
    grams = np.empty(0, dtype=np.uint64)
    gram_owner = np.empty(0, dtype=np.int64)
    if words.size >= 3:
        pos = np.arange(words.size - 2)
        valid = pos + 2 < ends[owner[:-2]]  # the gram stays inside its own text
        grams = (words[:-2] * _P1 + words[1:-1] * _P2 + words[2:] * _P3)[valid]
        gram_owner = owner[:-2][valid]
    short = np.flatnonzero(lengths < 3)
    if short.size:
        padded = np.array([(per_text[i] + [0, 0, 0])[:3] for i in short.tolist()], dtype=np.uint64)
        grams = np.concatenate([grams, padded[:, 0] * _P1 + padded[:, 1] * _P2 + padded[:, 2] * _P3])
        gram_owner = np.concatenate([gram_owner, short])
    mixed = ((grams * _MIX) >> _U64(32)).astype(np.uint32)
    sig = np.full(n * BUCKETS, _EMPTY, dtype=np.uint32)
    np.minimum.at(sig, gram_owner * BUCKETS + (mixed >> _VALUE_BITS), mixed & np.uint32(_VALUE_MASK))
    sig = sig.reshape(n, BUCKETS)
    parts = sig.reshape(n, BANDS, ROWS).astype(np.uint64)
    keys = (parts * _BAND_MULTS[:ROWS]).sum(axis=2, dtype=np.uint64) + np.arange(
        1, BANDS + 1, dtype=np.uint64
    ) * _MIX
    keys = (keys >> _U64(1)) | _U64(1)  # positive and never 0
    # An empty band (no gram fell in its buckets) matches every short text; it proves nothing.
    empty = (parts == _EMPTY).all(axis=2)
    band_keys = [
        [k for k, e in zip(row_k, row_e) if not e] for row_k, row_e in zip(keys.tolist(), empty.tolist())
    ]
    return sig, band_keys


def signature(text: str) -> array:
    """The MinHash signature of one text (see :func:`signatures`)."""
    return array("I", signatures([text])[0][0].tobytes())


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
        """None when ``text`` is new (and is then remembered), else (kind,
        id of the earlier example, similarity)."""
        return self.check_many([(item_id, text)])[0]

    def check_many(self, items: Sequence[tuple[str, str]]) -> list[Verdict | None]:
        """:meth:`check` for each (id, text) in order: an item is compared with every kept one before it,
        earlier items of the same batch included."""
        out: list[Verdict | None] = []
        keys = [_key(normalise(text).encode()) for _, text in items]
        if self.near_threshold is None:
            for (item_id, _), key in zip(items, keys):
                earlier = self._exact.get(key)
                if earlier is not None:
                    out.append(("exact", self._ids[earlier], 1.0))
                    continue
                self._exact[key] = len(self._ids)
                self._ids.append(item_id)
                out.append(None)
            return out
        # Exact repeats of kept examples need no signature.
        todo = [i for i, key in enumerate(keys) if key not in self._exact]
        sigs, bands = signatures([items[i][1] for i in todo]) if todo else (None, [])
        where = {i: j for j, i in enumerate(todo)}
        for i, ((item_id, _), key) in enumerate(zip(items, keys)):
            earlier = self._exact.get(key)
            if earlier is not None:
                out.append(("exact", self._ids[earlier], 1.0))
                continue
            j = where[i]
            sig = array("I", sigs[j].tobytes())
            verdict = self._near(sig, bands[j])
            if verdict is not None:
                out.append(verdict)
                continue
            idx = len(self._ids)
            self._exact[key] = idx
            self._ids.append(item_id)
            self._signatures.extend(sig)
            for bk in bands[j]:
                self._bands.setdefault(bk, idx)
            out.append(None)
        return out

    def _near(self, sig: array, band_keys: list[int]) -> Verdict | None:
        seen: set[int] = set()
        for bk in band_keys:
            other = self._bands.get(bk)
            if other is None or other in seen:
                continue
            seen.add(other)
            sim = similarity(sig, self._signatures[other * BUCKETS : (other + 1) * BUCKETS])
            if sim >= self.near_threshold:  # type: ignore[operator]
                return ("near", self._ids[other], round(sim, 3))
        return None
