"""``python -m app``: operate the platform from a shell.

  db init                        apply schema.sql (creates the database; no-op when applied)
  db status                      schema version
  org create --name --admin-email --admin-password [--json]
  apikey create --org ID --name NAME --role ROLE [--json]
  serve [--port N]               the api with gunicorn
"""
from __future__ import annotations

import argparse
import json
import sys

from config import child_env, settings


def _need_db() -> None:
    if not settings.DATABASE_URL:
        sys.exit("app: DATABASE_URL is not set (or use `make run`, which starts an embedded Postgres)")


def cmd_db_init(args) -> None:
    _need_db()
    from app.schema import apply_schema, schema_version

    try:
        applied = apply_schema(settings.DATABASE_URL)
    except Exception as exc:
        sys.exit(f"app db init: {exc.__class__.__name__}: {exc}")
    print(f"schema {'applied' if applied else 'already applied'} (version {schema_version(settings.DATABASE_URL)})")


def cmd_db_status(args) -> None:
    _need_db()
    from app.schema import schema_version

    version = schema_version(settings.DATABASE_URL)
    print(f"schema version: {version if version is not None else 'not applied (run: python -m app db init)'}")


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


def cmd_serve(args) -> None:
    import os

    port = args.port or settings.PORT
    argv = [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"0.0.0.0:{port}"]
    os.execve(sys.executable, argv, child_env())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description="Operate WhatsApp Service.")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("init", help="apply schema.sql").set_defaults(func=cmd_db_init)
    db.add_parser("status", help="show the schema version").set_defaults(func=cmd_db_status)

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

    p = sub.add_parser("serve", help="run the api (gunicorn)")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
