"""``python -m app``: the platform's data and its api, from a shell (background processing has its
own command line, ``python -m workers``).

  db init                        apply schema.sql (creates the database; no-op when applied)
  db status [--json]             schema version, latest version and pending migrations
  org create --name --admin-email --admin-password [--json]
  apikey create --org ID --name NAME --role ROLE [--json]
  encryption rotate [--batch-size N]   re-encrypt every *_encrypted value under the newest key
  encryption status [--json]           how many values each key id protects
  analytics-backfill --from DAY --to DAY [--org ID]
                                 recompute the analytics rollups of those UTC days (both included)
                                 from the messages, replacing them
  serve [--host H] [--port N]    the api with gunicorn (on HOST:PORT; 127.0.0.1 by default)
"""
from __future__ import annotations

import argparse
import json
import sys

from config import bind_address, child_env, settings


def _need_db() -> None:
    if not settings.DATABASE_URL:
        sys.exit(f"app: DATABASE_URL is not set, and no `make run` is running on {settings.data_dir} "
                 "(start `make run`, which starts an embedded Postgres, or set DATABASE_URL)")


def cmd_db_init(args) -> None:
    _need_db()
    from app.schema import apply_schema, schema_version

    try:
        done = apply_schema(settings.DATABASE_URL)
    except Exception as exc:
        sys.exit(f"app db init: {exc.__class__.__name__}: {exc}")
    said = {"created": "applied", "upgraded": "upgraded"}.get(done, "already applied")
    print(f"schema {said} (version {schema_version(settings.DATABASE_URL)})")


def cmd_db_status(args) -> None:
    """The database's revision and the migrations it has not had yet (``db init`` applies them)."""
    _need_db()
    from app.schema import head_revision, pending_revisions, schema_version

    version = schema_version(settings.DATABASE_URL)
    pending = pending_revisions(version)
    if args.json:
        print(json.dumps({"current": version, "head": head_revision(), "pending": pending}))
        return
    print(f"schema version: {version if version is not None else 'not applied (run: python -m app db init)'}")
    print(f"latest:         {head_revision()}")
    if version is not None:
        print(f"pending:        {', '.join(pending) if pending else 'none'}"
              + (" (run: python -m app db init)" if pending else ""))


def _run_service(fn):
    """Run fn(session) in one transaction, turning domain errors into a clear exit."""
    from app.db import job_session
    from app.errors import AppError

    try:
        with job_session() as session:
            return fn(session)
    except AppError as exc:
        detail = f" {json.dumps(exc.details)}" if exc.details else ""
        sys.exit(f"app: {exc.message}{detail}")


def cmd_org_create(args) -> None:
    _need_db()
    from app.team.service import create_organization

    org, user = _run_service(lambda s: create_organization(
        s, name=args.name, admin_email=args.admin_email, admin_password=args.admin_password,
        admin_name=args.admin_name))
    out = {"organization": {"id": org.id, "name": org.name},
           "user": {"id": user.id, "email": user.email, "role": user.role}}
    print(json.dumps(out) if args.json else f"organization {org.id} ({org.name}); admin {user.email} ({user.id})")


def cmd_apikey_create(args) -> None:
    _need_db()
    from app.apikeys.service import create_api_key
    from app.security.principal import SystemPrincipal

    key, secret = _run_service(lambda s: create_api_key(
        s, SystemPrincipal(args.org), name=args.name, role=args.role))
    out = {"id": key.id, "name": key.name, "role": key.role, "prefix": key.prefix, "key": secret}
    print(json.dumps(out) if args.json else f"api key {key.id} ({key.role}): {secret}\n(shown once; store it now)")


def cmd_encryption_rotate(args) -> None:
    """Re-seal every encrypted column under the newest key of APP_ENCRYPTION_KEYS (docs/security.md)."""
    _need_db()
    from app.security import crypto, rotation
    from config import check_production_settings

    check_production_settings()
    if args.batch_size < 1:
        sys.exit("app encryption rotate: --batch-size must be at least 1")

    def progress(r):
        print(f"  {r.column}: {r.rotated} re-encrypted so far", flush=True)

    print(f"re-encrypting under key {crypto.current_kid()!r} (batches of {args.batch_size})")
    reports = rotation.rotate(batch_size=args.batch_size, progress=progress if args.verbose else None)
    failed = 0
    for r in reports:
        line = (f"{r.column}: {r.rotated} re-encrypted, {r.current} under {crypto.current_kid()!r}, "
                f"{r.failed} unreadable")
        if r.changed_meanwhile:
            line += f", {r.changed_meanwhile} changed meanwhile (already new)"
        print(line)
        for failure in r.failures:
            print(f"    unreadable {failure}")
        failed += r.failed
    total = sum(r.rotated for r in reports)
    print(f"total: {total} re-encrypted, {failed} unreadable")
    if failed:
        sys.exit("app encryption rotate: some values could not be decrypted with any configured key "
                 "(their key is missing from APP_ENCRYPTION_KEYS, or they were tampered with); "
                 "they were left unchanged")


def _day(value: str):
    from datetime import date

    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def cmd_analytics_backfill(args) -> None:
    """Recompute the rollups of a range of UTC days from the messages (one transaction per day)."""
    _need_db()
    from app.analytics.rollup import backfill_day, days_between
    from app.db import job_session

    if args.start > args.end:
        sys.exit("app analytics-backfill: --from is after --to")
    hours = 0
    for day in days_between(args.start, args.end):
        with job_session() as session:
            done, _ = backfill_day(session, day, args.org)
        hours += done
        print(f"{day.isoformat()}: {done} hourly buckets recomputed", flush=True)
    print(f"done: {hours} hourly buckets over {(args.end - args.start).days + 1} days")


def cmd_encryption_status(args) -> None:
    """Values per key id, per column; which configured keys no longer protect anything."""
    _need_db()
    from app.security import crypto, rotation
    from config import check_production_settings

    check_production_settings()
    counts = rotation.status()
    configured = crypto.key_ids()
    totals: dict[str, int] = {}
    for per_kid in counts.values():
        for kid, n in per_kid.items():
            totals[kid] = totals.get(kid, 0) + n
    unused = [kid for kid in configured[1:] if not totals.get(kid)]
    unknown = sorted(kid for kid in totals if kid not in configured)
    if args.json:
        print(json.dumps({"newest": configured[0], "configured": configured, "columns": counts,
                          "totals": totals, "removable": unused, "unknown": unknown}))
        return

    def role(kid):
        return "newest" if kid == configured[0] else ("older" if kid in configured else "NOT CONFIGURED")

    print(f"keys (newest first): {', '.join(configured)}")
    print(f"{'column':<40} {'key':<12} {'values':>8}  key status")
    for column, per_kid in counts.items():
        if not per_kid:
            print(f"{column:<40} {'-':<12} {0:>8}")
        for kid, n in sorted(per_kid.items()):
            print(f"{column:<40} {kid:<12} {n:>8}  {role(kid)}")
    for kid in configured:
        print(f"total under {kid}: {totals.get(kid, 0)} ({role(kid)})")
    if unused:
        print(f"no value uses {', '.join(unused)}: removable from APP_ENCRYPTION_KEYS")
    still_used = [kid for kid in configured[1:] if totals.get(kid)]
    if still_used:
        print(f"{', '.join(still_used)} still protect values: run `python -m app encryption rotate` first")
    if unknown:
        print(f"values under key ids missing from APP_ENCRYPTION_KEYS: {', '.join(unknown)}")


def cmd_serve(args) -> None:
    import os

    host, port = args.host or settings.HOST, args.port or settings.PORT
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:app.system.gunicorn_conf", "wsgi:app",
            "--bind", bind_address(host, port)]
    os.execve(sys.executable, argv, child_env(HOST=host))


def main(argv=None) -> None:
    import app.models  # noqa: F401  (an entry point: registers every table)

    parser = argparse.ArgumentParser(prog="python -m app", description="Operate WhatsApp Service.")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("init", help="apply schema.sql").set_defaults(func=cmd_db_init)
    p = db.add_parser("status", help="the schema version, the latest one and the pending migrations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_db_status)

    org = sub.add_parser("org", help="organisations").add_subparsers(dest="org_command", required=True)
    p = org.add_parser("create", help="create an organisation and its first admin")
    p.add_argument("--name", required=True)
    p.add_argument("--admin-email", required=True)
    p.add_argument("--admin-password", required=True)
    p.add_argument("--admin-name", default="Admin")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_org_create)

    key = sub.add_parser("apikey", help="API keys").add_subparsers(dest="key_command", required=True)
    p = key.add_parser("create", help="create an API key (printed once)")
    p.add_argument("--org", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=["admin", "manager", "agent", "viewer"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_apikey_create)

    enc = sub.add_parser("encryption", help="field encryption keys").add_subparsers(dest="enc_command", required=True)
    p = enc.add_parser("rotate", help="re-encrypt every *_encrypted value under the newest key")
    p.add_argument("--batch-size", type=int, default=500, help="rows per transaction (default 500)")
    p.add_argument("--verbose", action="store_true", help="print progress after every batch")
    p.set_defaults(func=cmd_encryption_rotate)
    p = enc.add_parser("status", help="how many values each key id protects")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_encryption_status)

    p = sub.add_parser("analytics-backfill", help="recompute the analytics rollups of a range of UTC days")
    p.add_argument("--from", dest="start", type=_day, required=True, help="first UTC day (YYYY-MM-DD)")
    p.add_argument("--to", dest="end", type=_day, required=True, help="last UTC day, included (YYYY-MM-DD)")
    p.add_argument("--org", help="only this organisation's (default: every organisation)")
    p.set_defaults(func=cmd_analytics_backfill)

    p = sub.add_parser("serve", help="run the api (gunicorn)")
    p.add_argument("--host", help="address to listen on (default HOST, 127.0.0.1)")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
