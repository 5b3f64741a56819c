"""The job queue on both databases: priority and FIFO, idempotency, retries with backoff, leases, controls."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select, update

from learnloop.daemon import queue
from learnloop.errors import Conflict, ValidationFailed
from learnloop.store.db import Database
from learnloop.store.models import Event, Job, utcnow

LEASE = 30.0


def _claim(db: Database, owner: str = "w1") -> queue.JobInfo | None:
    return queue.claim(db, owner, lease_seconds=LEASE)


def _events(db: Database, job_id: int | None = None) -> list[str]:
    with db.read_session() as s:
        stmt = select(Event.kind).order_by(Event.id)
        if job_id is not None:
            stmt = stmt.where(Event.job_id == job_id)
        return list(s.scalars(stmt))


def test_priority_then_fifo(db: Database) -> None:
    ids = {}
    for name, prio in [("n1", "normal"), ("l1", "low"), ("h1", "high"), ("n2", "normal"), ("h2", "high")]:
        ids[name] = queue.submit(db, "score", {"n": name}, priority=prio)[0].id
    order = []
    while (job := _claim(db)) is not None:
        order.append(job.payload["n"])
        queue.succeed(db, job.id, "w1")
    assert order == ["h1", "h2", "n1", "n2", "l1"]
    assert _claim(db) is None


def test_idempotency_key_queues_once(db: Database) -> None:
    a, created_a = queue.submit(db, "train", {"x": 1}, idempotency_key="loop:qa:cycle:1")
    b, created_b = queue.submit(db, "train", {"x": 2}, idempotency_key="loop:qa:cycle:1")
    assert created_a and not created_b and a.id == b.id and b.payload == {"x": 1}
    with db.read_session() as s:
        assert s.scalar(select(Job.id).where(Job.id != a.id)) is None


def test_bad_submissions_are_refused(db: Database) -> None:
    with pytest.raises(ValidationFailed, match="Unknown job kind 'bake'"):
        queue.submit(db, "bake")
    with pytest.raises(ValidationFailed, match="Unknown priority 'urgent'"):
        queue.submit(db, "train", priority="urgent")


def test_retry_with_exponential_backoff_then_failed(db: Database) -> None:
    job, _ = queue.submit(db, "score", max_attempts=3)
    waits = []
    for attempt in (1, 2, 3):
        claimed = _claim(db)
        assert claimed is not None and claimed.id == job.id and claimed.attempts == attempt
        before = utcnow()
        state = queue.fail(
            db,
            job.id,
            "w1",
            f"boom {attempt}",
            output_tail=f"line\nboom {attempt}",
            backoff=10,
            backoff_max=25,
        )
        info = queue.get_job(db, job.id)
        if attempt < 3:
            assert state == "queued" and info.state == "queued"
            waits.append(round((info.run_after - before).total_seconds()))
            assert _claim(db) is None  # not before its backoff has passed
            with db.session() as s:
                s.execute(
                    update(Job).where(Job.id == job.id).values(run_after=utcnow() - dt.timedelta(seconds=1))
                )
        else:
            assert state == "failed" and info.state == "failed" and info.finished_at is not None
            assert info.error == "boom 3" and info.output_tail == "line\nboom 3"
    assert waits == [10, 20]  # 10 * 2**0, 10 * 2**1 (the cap, 25, not reached)
    assert queue.backoff_seconds(6, 10, 25) == 25
    assert _events(db, job.id).count("job.retried") == 2 and _events(db, job.id)[-1] == "job.failed"


def test_expired_lease_is_taken_over_without_counting_an_attempt(db: Database) -> None:
    job, _ = queue.submit(db, "train", {"config": {}})
    first = _claim(db, "dead-daemon")
    assert first is not None and first.attempts == 1
    assert queue.reap(db) == []  # lease still valid
    with db.session() as s:
        s.execute(
            update(Job).where(Job.id == job.id).values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    assert queue.reap(db) == [job.id]
    info = queue.get_job(db, job.id)
    assert info.state == "queued" and info.lease_owner is None and info.attempts == 0
    second = _claim(db, "alive")
    assert second is not None and second.attempts == 1 and second.lease_owner == "alive"
    # The dead daemon's late heartbeat is refused: it must stop working on the job.
    assert queue.heartbeat(db, job.id, "dead-daemon", lease_seconds=LEASE) is None
    assert queue.heartbeat(db, job.id, "alive", lease_seconds=LEASE) is not None
    assert "job.stalled" in _events(db, job.id)


def test_controls_on_waiting_jobs(db: Database) -> None:
    a = queue.submit(db, "score")[0].id
    b = queue.submit(db, "score")[0].id
    assert queue.control(db, a, "pause").state == "paused"
    assert _claim(db).id == b  # a paused job is not taken
    queue.succeed(db, b, "w1")
    with pytest.raises(Conflict, match="it has finished"):
        queue.control(db, b, "resume")
    c = queue.submit(db, "score")[0].id
    with pytest.raises(Conflict, match="only a paused job can be resumed"):
        queue.control(db, c, "resume")
    queue.control(db, c, "cancel")
    assert queue.control(db, a, "resume").state == "queued"
    assert queue.control(db, a, "cancel").state == "cancelled"
    assert _claim(db) is None
    with pytest.raises(Conflict, match="retry"):
        queue.control(db, a, "pause")
    again = queue.control(db, a, "retry")
    assert again.state == "queued" and _claim(db).id == a


def test_controls_on_a_running_job_go_through_the_worker(db: Database) -> None:
    job = queue.submit(db, "train", {"config": {}})[0]
    other = queue.submit(db, "train", {"config": {}})[0]
    _claim(db)
    info = queue.control(db, job.id, "pause")
    assert info.state == "running" and info.desired_state == "pause"  # the run acts on it at its next step
    assert queue.heartbeat(db, job.id, "w1", lease_seconds=LEASE).desired_state == "pause"
    queue.control(db, job.id, "skip")
    assert queue.release(db, job.id, "w1", reason="requested") == "queued"
    # Skipped: behind the job that was waiting, with its attempt not counted.
    nxt = _claim(db)
    assert nxt.id == other.id
    queue.control(db, other.id, "stop")
    assert queue.release(db, other.id, "w1", reason="requested") == "paused"
    assert _claim(db).id == job.id
    queue.control(db, job.id, "cancel")
    assert queue.release(db, job.id, "w1", reason="requested") == "cancelled"
    kinds = _events(db)
    assert {
        "job.pause_requested",
        "job.skip_requested",
        "job.skipped",
        "job.stopped",
        "job.cancelled",
    } <= set(kinds)


def test_concurrent_claims_never_hand_out_a_job_twice(db: Database) -> None:
    n = 40
    for i in range(n):
        queue.submit(db, "score", {"i": i})
    got: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            while (job := queue.claim(db, name, lease_seconds=LEASE)) is not None:
                with lock:
                    got.append(job.id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got) == sorted(set(got)) and len(got) == n


def test_daemon_switches(db: Database) -> None:
    assert not queue.get_control(db, "daemon.paused")
    assert queue.set_control(db, "daemon.paused", True, actor="t")
    assert not queue.set_control(db, "daemon.paused", True)
    assert queue.get_control(db, "daemon.paused")
    queue.set_control(db, "daemon.paused", False)
    queue.set_control(db, "daemon.frozen", True)
    queue.set_control(db, "daemon.frozen", False)
    assert _events(db) == ["daemon.paused", "daemon.resumed", "daemon.frozen", "daemon.unfrozen"]
