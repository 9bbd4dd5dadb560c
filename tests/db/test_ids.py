"""Public ids (app.db.new_id): prefix + 26 Crockford base32 characters, 48-bit millisecond time then
80 random bits, sorting in the order they were made."""
from __future__ import annotations

import base64
import os
import re
import time

from app import db

_FROM_B32 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", db._CROCKFORD)
ID = re.compile(r"^msg_[0-9A-HJKMNP-TV-Z]{26}$")


def reference_encoding(value: int) -> str:
    """The encoding ids have always had: the low 130 bits of ``value`` as 26 base32 characters."""
    return base64.b32encode(value.to_bytes(20, "big"))[6:].decode().translate(_FROM_B32)


def decode(public_id: str) -> int:
    value = 0
    for char in public_id.split("_", 1)[1]:
        value = value * 32 + db._CROCKFORD.index(char)
    return value


def test_format_length_and_alphabet():
    ids = [db.new_id("msg") for _ in range(2000)]
    assert all(ID.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert db.new_id("ctc").startswith("ctc_") and len(db.new_id("ctc")) == 30


def test_the_encoding_is_the_reference_base32_of_time_and_random_bits():
    before = int(time.time() * 1000)
    ids = [db.new_id("msg") for _ in range(500)]
    after = int(time.time() * 1000)
    for public_id in ids:
        value = decode(public_id)
        assert reference_encoding(value) == public_id[4:]
        assert before <= value >> 80 <= after + 1  # a burst within a millisecond may step into the next
    # the same table encodes any 130-bit value like the reference does
    for value in (0, 1, (1 << 130) - 1, (1 << 80) - 1, 1 << 80, int.from_bytes(os.urandom(17), "big") >> 6):
        assert reference_encoding(value) == _encode(value)


def _encode(value: int) -> str:
    p = db._PAIRS
    return "".join(p[value >> shift & 1023] for shift in range(120, -1, -10))


def test_ids_made_one_after_another_sort_in_that_order():
    ids = [db.new_id("msg") for _ in range(5000)]
    assert ids == sorted(ids)
    assert len({i[4:14] for i in ids}) < len(ids), "many fall in one millisecond"


def test_a_forked_child_draws_its_own_random_bits():
    db.new_id("msg")  # the parent has random bytes drawn ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, db.new_id("msg").encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    parent = db.new_id("msg")
    assert child[14:] != parent[14:], "the child did not reuse the parent's random bytes"
