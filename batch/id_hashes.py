"""Job ids as 64-bit hashes, 8 bytes each: the set of ids already done (resume) and the
duplicate-id check of validation both hold millions of ids this way.

Collision odds for a million ids are about 3e-8; where a collision would matter (duplicate
ids), colliding hashes are confirmed against the ids themselves.
"""

from __future__ import annotations

import bisect
import hashlib
from array import array

import pyarrow as pa
import pyarrow.compute as pc


def id_hash(job_id: str) -> int:
    """A 64-bit hash of a job id."""
    return int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(), "little")


def _sorted(hashes: array[int]) -> pa.Array:
    """`hashes` sorted inside Arrow (a copy of 8 bytes each, no Python ints)."""
    return pa.Array.from_buffers(pa.uint64(), len(hashes), [None, pa.py_buffer(hashes)]).sort()


def repeated_hashes(hashes: array[int]) -> set[int]:
    """The hashes that occur more than once."""
    if len(hashes) < 2:
        return set()
    ordered = _sorted(hashes)
    later = ordered.slice(1)
    same = pc.equal(later, ordered.slice(0, len(ordered) - 1))
    return {int(v) for v in pc.filter(later, same).to_pylist()}


class IdHashSet:
    """A set of job ids as a sorted array of their hashes: a million ids cost 8 MB, and a
    lookup is one hash and a binary search."""

    def __init__(self, hashes: array[int] | None = None) -> None:
        """`hashes` must be sorted (use `from_hashes` otherwise)."""
        self._sorted: array[int] = hashes if hashes is not None else array("Q")

    @classmethod
    def from_hashes(cls, hashes: array[int]) -> IdHashSet:
        if not hashes:
            return cls()
        ordered = _sorted(hashes)
        out: array[int] = array("Q")
        out.frombytes(ordered.buffers()[1].to_pybytes()[: 8 * len(ordered)])
        return cls(out)

    def __len__(self) -> int:
        return len(self._sorted)

    def __contains__(self, job_id: object) -> bool:
        if not isinstance(job_id, str) or not self._sorted:
            return False
        key = id_hash(job_id)
        i = bisect.bisect_left(self._sorted, key)
        return i < len(self._sorted) and self._sorted[i] == key
