"""The scheduler's leader election with real processes, and its outbox sweep."""
import signal
import time

import pytest

from app.models import JobOutbox
from app.system.heartbeats import live_heartbeats
from tests.procs import spawn, stop, wait_for

pytestmark = pytest.mark.workers


def schedulers(redis_conn):
    return {b["pid"]: b for b in live_heartbeats(redis_conn, "scheduler")}


def test_one_leader_and_a_fast_takeover_when_it_dies(redis_conn):
    a = spawn(["-m", "workers", "scheduler"])
    b = None
    try:
        wait_for(lambda: schedulers(redis_conn).get(a.pid, {}).get("leader"), timeout=20, message="A to lead")
        b = spawn(["-m", "workers", "scheduler"])
        wait_for(lambda: b.pid in schedulers(redis_conn), timeout=20, message="B to start")
        time.sleep(2)  # B keeps trying the lock; it must not get it while A lives
        beats = schedulers(redis_conn)
        assert beats[a.pid]["leader"] is True
        assert beats[b.pid]["leader"] is False

        # Postgres drops the dead leader's lock with its connection; B takes it at its next try
        # (every POLL_SECONDS), with no lease to wait out
        a.send_signal(signal.SIGKILL)
        wait_for(lambda: schedulers(redis_conn).get(b.pid, {}).get("leader"), timeout=15, message="B to take over")
    finally:
        stop(a)
        if b:
            out = stop(b)
            assert "Traceback" not in out, out


def test_the_leader_sweeps_the_outbox(committed, redis_conn):
    committed.add(JobOutbox(actor_name="system.noop", queue_name="default", args=["lost"], kwargs={}, options={}))
    committed.commit()
    proc = spawn(["-m", "workers", "scheduler"], OUTBOX_SWEEP_AFTER="0")
    try:
        wait_for(lambda: redis_conn.llen("dramatiq:default") == 1, timeout=30, message="the sweep to re-send the job")
    finally:
        stop(proc)
