"""Faults of the stores and processes under a flow of messages, on a whole stack of real processes
with a Postgres and a Redis of its own (tests/fault_stack.py): nothing accepted is lost, nothing is
sent twice, nothing stays stuck, and no status lies. bench/bench_faults.py runs the same faults
over 10,000 messages each."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.fault_stack import FAULTS, Stack

pytestmark = [pytest.mark.workers, pytest.mark.xdist_group("faults")]

COUNT = 200


@pytest.fixture(scope="module")
def stack():
    """The stack's own Postgres runs as another user: its data lives outside pytest's temporary
    root (see ``own_postgres_dir`` in tests/conftest.py; this fixture lives for the module)."""
    workdir = Path(tempfile.mkdtemp(prefix="wa-faults-"))
    s = Stack(workdir)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def clean(row) -> None:
    assert row.accepted == COUNT, row
    assert (row.lost, row.sent_twice, row.stuck, row.lies) == (0, 0, 0, 0), (row, row.notes)


def test_a_killed_messages_pool_leaves_no_false_failure(stack):
    clean(FAULTS["kill_messages_pool"](stack, COUNT))


def test_a_killed_api_loses_nothing_its_clients_retry(stack):
    clean(FAULTS["kill_api"](stack, COUNT))


def test_redis_killed_and_restarted_from_its_aof(stack):
    clean(FAULTS["redis_aof"](stack, COUNT))


def test_redis_restarted_empty_is_noticed_and_everything_sent_again(stack):
    clean(FAULTS["redis_empty"](stack, COUNT))
    assert stack.logged("default", "Redis had lost its data"), "the wipe was recovered at once"


def test_a_full_redis_is_back_pressure_not_loss(stack):
    row = FAULTS["redis_full"](stack, COUNT)
    clean(row)
    assert row.refused > 0, "the api answered 503 while Redis refused writes"
    assert row.notes["health_while_full"]["status"] == "full"


def test_postgres_stopped_hard_and_started_again(stack):
    clean(FAULTS["postgres_stop"](stack, COUNT))
