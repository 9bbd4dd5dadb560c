"""The outbox: jobs leave only after commit, exactly once, and the sweeper recovers lost ones."""
import pytest
from sqlalchemy import func, select

import jobs  # noqa: F401  (registers actors)
from app import outbox
from app.models import JobOutbox
from tests.procs import wait_for


def ready(redis_conn, queue="default") -> list[bytes]:
    return redis_conn.lrange(f"dramatiq:{queue}", 0, -1)


def test_rollback_enqueues_nothing(committed, redis_conn):
    outbox.enqueue(committed, "system.noop", "a")
    committed.rollback()
    assert ready(redis_conn) == []
    assert committed.scalar(select(func.count()).select_from(JobOutbox)) == 0


def test_commit_enqueues_exactly_once(committed, redis_conn):
    outbox.enqueue(committed, "system.noop", "once")
    assert ready(redis_conn) == [], "nothing may leave before the commit"
    committed.commit()
    assert len(ready(redis_conn)) == 1
    committed.commit()  # a second commit must not resend
    assert len(ready(redis_conn)) == 1
    # dispatched rows are deleted in the background, batched, so the sweeper finds nothing to resend
    wait_for(lambda: committed.scalar(select(func.count()).select_from(JobOutbox)) == 0, timeout=10,
             message="the dispatched row to be deleted")
    assert outbox.sweep(committed, older_than_s=0) == 0
    assert len(ready(redis_conn)) == 1


def test_delayed_job_goes_to_the_delay_queue(committed, redis_conn):
    outbox.enqueue(committed, "system.noop", delay_ms=60_000)
    committed.commit()
    assert ready(redis_conn) == []
    assert redis_conn.llen("dramatiq:default.DQ") == 1


def test_sweeper_recovers_a_job_lost_between_commit_and_enqueue(committed, redis_conn, monkeypatch):
    def crash(row):
        raise ConnectionError("process died before the send")

    monkeypatch.setattr(outbox, "_send", crash)
    outbox.enqueue(committed, "system.noop", "lost")
    committed.commit()
    assert ready(redis_conn) == []
    monkeypatch.undo()

    # too young: left alone (its own process may still be about to send it)
    assert outbox.sweep(committed, older_than_s=3600) == 0
    assert outbox.sweep(committed, older_than_s=0) == 1
    committed.commit()
    msgs = ready(redis_conn)
    assert len(msgs) == 1
    assert committed.scalar(select(func.count()).select_from(JobOutbox)) == 0
    assert outbox.sweep(committed, older_than_s=0) == 0


def test_a_late_background_delete_cannot_remove_a_row_of_the_next_test(committed, engine, redis_conn, monkeypatch):
    """Dispatched rows are deleted in the background, up to FLUSH_EVERY later: the test that sent
    the job may be over by then, its tables emptied, and the next test's lost job written. That
    row must not get the old id (the suite once restarted identities, and the late delete then
    removed the next test's row before its sweep could find it)."""
    from tests.conftest import truncate_all

    late = outbox._Dispatched()
    monkeypatch.setattr(late, "_run", lambda: None)  # no background thread: we flush by hand, late
    monkeypatch.setattr(outbox, "_dispatched", late)
    real_send = outbox._send
    outbox.enqueue(committed, "system.noop", "sent")
    committed.commit()  # dispatched: its row waits for the background delete
    truncate_all(engine)  # the test is over; the next one begins

    def crash(row):
        raise ConnectionError("process died before the send")

    monkeypatch.setattr(outbox, "_send", crash)
    outbox.enqueue(committed, "system.noop", "lost")
    committed.commit()
    monkeypatch.setattr(outbox, "_send", real_send)
    late.flush()  # the first job's delete, at last
    assert outbox.sweep(committed, older_than_s=0) == 1
    committed.commit()
    assert len(ready(redis_conn)) == 2


def test_a_job_enqueued_during_a_request_carries_its_request_id_even_when_swept(committed, redis_conn, monkeypatch):
    import dramatiq

    from app.logs import current_request_id

    def crash(row):
        raise ConnectionError("process died before the send")

    real_send = outbox._send
    token = current_request_id.set("req-77")
    try:
        outbox.enqueue(committed, "system.noop", "traced")
        committed.commit()
        monkeypatch.setattr(outbox, "_send", crash)
        outbox.enqueue(committed, "system.noop", "lost", delay_ms=5)
        committed.commit()  # its send fails: only the row remembers the request
    finally:
        current_request_id.reset(token)
        monkeypatch.setattr(outbox, "_send", real_send)
    outbox.enqueue(committed, "system.noop", "untraced")
    committed.commit()
    outbox._dispatched.flush()  # the dispatched rows' background delete, now
    assert outbox.sweep(committed, older_than_s=0) == 1  # the scheduler's sweep: no request of its own
    committed.commit()
    raw = [*redis_conn.hvals("dramatiq:default.msgs"), *redis_conn.hvals("dramatiq:default.DQ.msgs")]
    options = {m.args[0]: m.options for m in map(dramatiq.Message.decode, raw)}
    assert options["traced"]["request_id"] == "req-77" and options["lost"]["request_id"] == "req-77"
    assert "request_id" not in options["untraced"]


def test_enqueue_inside_request_transaction_is_rolled_back_on_error(session, redis_conn):
    outbox.enqueue(session, "system.noop")
    session.rollback()
    assert ready(redis_conn) == []


@pytest.mark.workers
def test_a_real_worker_runs_the_dispatched_job(committed, run_pool):
    """The job's effect is what is checked: a job that fails (no retries) empties its queue too."""
    from datetime import timedelta

    from app.auth.sessions import EXPIRED_TOKENS_KEPT
    from app.db import utcnow
    from app.models import RefreshToken
    from tests import factories as f

    expired = f.make_refresh_token(committed, expires_at=utcnow() - EXPIRED_TOKENS_KEPT - timedelta(hours=1)).id
    current = f.make_refresh_token(committed).id
    committed.commit()

    def left() -> set[str]:
        committed.rollback()  # a fresh snapshot
        return set(committed.scalars(select(RefreshToken.id).where(RefreshToken.id.in_([expired, current]))))

    run_pool("default")
    outbox.enqueue(committed, "auth.purge_expired_tokens")
    committed.commit()
    wait_for(lambda: left() == {current}, timeout=20, message="the worker to purge the expired refresh token")


def test_the_api_process_sends_to_the_configured_broker(redis_conn):
    """A process that never imported ``jobs`` (the api) must still send to REDIS_URL's broker,
    not dramatiq's implicit default on localhost."""
    import subprocess
    import sys

    from config import ROOT

    code = ("from app import outbox; outbox._send({'queue_name': 'default', 'actor_name': 'system.noop', "
            "'args': [], 'kwargs': {}, 'options': {}})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert redis_conn.llen("dramatiq:default") == 1


def test_a_job_sent_after_commit_without_a_row_carries_its_request_id_too(session, redis_conn):
    import dramatiq

    from app.logs import current_request_id

    token = current_request_id.set("req-78")
    try:
        outbox.after_commit(session, "system.noop", [("traced",)])
        outbox.after_commit(session, "system.noop", [("delayed",)], delays_ms=[60_000])
        session.commit()
    finally:
        current_request_id.reset(token)
    outbox.after_commit(session, "system.noop", [("untraced",)])
    session.commit()
    raw = [*redis_conn.hvals("dramatiq:default.msgs"), *redis_conn.hvals("dramatiq:default.DQ.msgs")]
    options = {m.args[0]: m.options for m in map(dramatiq.Message.decode, raw)}
    assert options["traced"]["request_id"] == options["delayed"]["request_id"] == "req-78"
    assert "request_id" not in options["untraced"]
