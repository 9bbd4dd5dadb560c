"""docs/webhooks.md tells integrators the truth: every event type is documented with an example,
the standard-library verification snippet verifies a real delivery (and refuses a forged one), and
the retry table matches the schedule the code follows."""
from __future__ import annotations

import json
import re

from app.webhooks import delivery, signing
from app.webhooks.events import EVENT_TYPES
from tests.procs import ROOT

DOC = (ROOT / "docs" / "webhooks.md").read_text()


def test_every_event_type_has_a_section_with_an_example_body():
    for event_type in EVENT_TYPES:
        section = DOC.split(f"### {event_type}\n", 1)
        assert len(section) == 2, f"docs/webhooks.md has no section for {event_type}"
        example = re.search(r"```json\n(.*?)```", section[1], re.S)
        assert example, f"{event_type}: no example body"
        body = json.loads(example.group(1).replace("...", "x"))
        assert body["type"] == event_type and set(body) == {"id", "type", "created_at", "organization_id", "data"}


def test_the_standard_library_snippet_verifies_a_real_signature():
    snippet = DOC.split("### With the standard library only", 1)[1]
    code = re.search(r"```python\n(.*?)```", snippet, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/webhooks.md", "exec"), namespace)
    verify = namespace["verify"]

    import time

    secret, old = signing.generate_secret(), signing.generate_secret()
    body = json.dumps({"id": "evt_1", "type": "message.read", "data": {"text": "olá"}}, ensure_ascii=False).encode()
    headers = signing.request_headers([secret, old], "evt_1", int(time.time()), body)
    assert verify(secret, headers, body) and verify(old, headers, body)
    assert not verify(signing.generate_secret(), headers, body)
    assert not verify(secret, headers, body + b" ")
    stale = signing.request_headers([secret], "evt_1", int(time.time()) - 3600, body)
    assert not verify(secret, stale, body)


def test_the_retry_table_is_the_schedule():
    rows = re.findall(r"^\| (\d+) \| (immediately|[\d]+ (?:seconds|minutes|hours?)) \|", DOC, re.M)
    assert [int(n) for n, _ in rows] == list(range(1, delivery.MAX_ATTEMPTS + 1))
    unit = {"seconds": 1, "minutes": 60, "hour": 3600, "hours": 3600}
    delays = [int(d.split()[0]) * unit[d.split()[1]] for _, d in rows[1:]]
    assert tuple(delays) == delivery.RETRY_SCHEDULE_S
