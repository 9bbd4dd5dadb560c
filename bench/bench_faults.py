"""Fault injection over the whole stack (tests/fault_stack.py): for each fault, a flow of messages
(10,000 by default) on a sim client of its own while the fault happens; prints one table row per
fault: accepted, lost, sent twice, stuck, status that lies, 503s answered, seconds.

    .venv/bin/python bench/bench_faults.py [--count 10000] [--only redis_aof,postgres_stop]

Everything runs on servers of its own (an embedded Postgres and a redis-server under a scratch
directory): nothing of the machine's is touched. It takes a few minutes per fault at 10,000.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    os.environ.setdefault("APP_ENV", "test")
    from tests.fault_stack import FAULTS, Stack, table

    names = [n for n in (args.only.split(",") if args.only else FAULTS) if n]
    with tempfile.TemporaryDirectory(prefix="wa-faults-") as tmp:
        os.environ["DATA_DIR"] = str(Path(tmp) / "data")
        stack = Stack(Path(tmp))
        started = time.monotonic()
        try:
            stack.start()
            rows = []
            for name in names:
                rows.append(FAULTS[name](stack, args.count))
                print(table(rows[-1:]), flush=True)
        finally:
            stack.stop()
    print(f"\nFaults over {args.count} messages each ({time.monotonic() - started:.0f} s in all)\n")
    print(table(rows))
    for row in rows:
        print(f"  {row.fault}: {row.notes}")
    return 0 if all(r.lost == r.sent_twice == r.stuck == r.lies == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
