import time
import uuid

from learnloop.ids import new_id


def test_ids_are_uuid7_and_sort_in_creation_order() -> None:
    first = new_id()
    time.sleep(0.002)
    later = [new_id() for _ in range(1000)]
    parsed = uuid.UUID(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert len(first) == 32 and all(first < i for i in later)
    # The leading 48 bits are the creation time in milliseconds.
    assert abs((int(first, 16) >> 80) - time.time() * 1000) < 5_000
    assert len(set(later)) == len(later)
