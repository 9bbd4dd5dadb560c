"""Key rotation of field encryption: re-seal every stored value under the newest key, and count
which key protects how many values.

The columns are found, not listed: every ``*_encrypted`` column of every mapped table
(``app.models`` maps the whole schema). ``rotate`` walks each column by primary key in batches,
one transaction per batch, and rewrites a value only if it is unchanged since it was read
(compare-and-set), so it can run while the platform is up, be interrupted and be run again.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Column, Table, func, select, tuple_, update
from sqlalchemy.engine import Connection, Engine

from app.security import crypto

SUFFIX = "_encrypted"
#: how many failing rows a report names (the count is always complete)
MAX_FAILURES_LISTED = 20


@dataclass(frozen=True)
class EncryptedColumn:
    table: Table
    column: Column

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column.name}"


def encrypted_columns() -> list[EncryptedColumn]:
    """Every ``*_encrypted`` column of the schema, in a stable order."""
    import app.models  # noqa: F401  (maps every table on Base.metadata)
    from app.db import Base

    found = [EncryptedColumn(table, column) for table in Base.metadata.sorted_tables
             for column in table.columns if column.name.endswith(SUFFIX)]
    return sorted(found, key=lambda c: c.name)


@dataclass
class ColumnReport:
    column: str
    rotated: int = 0
    current: int = 0  # already under the newest key when the run ended
    changed_meanwhile: int = 0  # rewritten by the application between read and write: left alone
    failed: int = 0  # cannot be opened with any configured key: left alone
    failures: list[str] = field(default_factory=list)  # "pk: reason", the first MAX_FAILURES_LISTED


def _engine(bind: Engine | Connection | None):
    if bind is not None:
        return bind
    from app.db import get_engine

    return get_engine()


def _pk(row, n: int) -> tuple:
    return tuple(row[:n])


def rotate(bind: Engine | None = None, *, batch_size: int = 500,
           progress: Callable[[ColumnReport], None] | None = None) -> list[ColumnReport]:
    """Re-seal every encrypted value that is not under the newest key. Idempotent."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    engine = _engine(bind)
    newest = crypto.current_kid()
    current_prefix = f"{crypto.VERSION}:{newest}:"
    reports = []
    for ec in encrypted_columns():
        table, col = ec.table, ec.column
        pk = list(table.primary_key.columns)
        # rotation is not an edit: keep application-maintained columns (e.g. updated_at) as they are
        untouched = {c.name: c for c in table.columns if c.onupdate is not None}
        report = ColumnReport(ec.name)
        last: tuple | None = None
        while True:
            with engine.begin() as conn:
                stmt = (select(*pk, col)
                        .where(col.is_not(None), ~col.startswith(current_prefix, autoescape=True))
                        .order_by(*pk).limit(batch_size))
                if last is not None:
                    stmt = stmt.where(tuple_(*pk) > tuple_(*last))
                rows = conn.execute(stmt).all()
                if not rows:
                    break
                for row in rows:
                    key, value = _pk(row, len(pk)), row[-1]
                    try:
                        sealed = crypto.reseal(value)
                    except crypto.DecryptionError as exc:
                        report.failed += 1
                        if len(report.failures) < MAX_FAILURES_LISTED:
                            report.failures.append(f"{'/'.join(map(str, key))}: {exc}")
                        continue
                    if sealed is None:
                        continue
                    where = [c == v for c, v in zip(pk, key, strict=True)] + [col == value]
                    result = conn.execute(update(table).where(*where).values({col.name: sealed, **untouched}))
                    if result.rowcount == 1:
                        report.rotated += 1
                    else:
                        report.changed_meanwhile += 1
                last = _pk(rows[-1], len(pk))
            if progress:
                progress(report)
        with engine.connect() as conn:
            report.current = conn.execute(
                select(func.count()).select_from(table).where(col.startswith(current_prefix, autoescape=True))
            ).scalar_one()
        reports.append(report)
    return reports


def status(bind: Engine | None = None) -> dict[str, dict[str, int]]:
    """``{"table.column": {key_id: values}}`` for every encrypted column (values that are not in
    the ``v1:<kid>:...`` format count under ``"?"``)."""
    engine = _engine(bind)
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for ec in encrypted_columns():
            col = ec.column
            kid = func.split_part(col, ":", 2)
            well_formed = col.startswith(f"{crypto.VERSION}:", autoescape=True)
            rows = conn.execute(
                select(kid, func.count()).where(col.is_not(None), well_formed).group_by(kid)
            ).all()
            counts = {k: n for k, n in rows}
            odd = conn.execute(select(func.count()).select_from(ec.table)
                               .where(col.is_not(None), ~well_formed)).scalar_one()
            if odd:
                counts["?"] = odd
            out[ec.name] = counts
    return out
