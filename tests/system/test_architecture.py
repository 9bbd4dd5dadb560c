"""The layout rules the code can check: import contracts (pyproject.toml), one way to the broker,
one queue table, statuses and settings in one place, no silent import guards, short modules."""
from __future__ import annotations

import ast
import functools
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import ROOT

CODE_DIRS = ("app", "jobs", "workers")
#: a module longer than this says why in its docstring (a paragraph starting "Size:")
MAX_LINES = 400


def code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_nodes(*, skip: tuple[str, ...] = (), extra: tuple[Path, ...] = ()) -> Iterator[tuple[str, ast.AST]]:
    """(file, node) for every syntax node of the code (but the files in ``skip``)."""
    for path in [*code_files(), *extra]:
        if rel(path) not in skip:
            for node in ast.walk(parsed(path)):
                yield rel(path), node


def test_the_import_contracts_hold():
    """No module cycle; workers > jobs > app; a foundation that knows no domain; transports without
    the database; the model registry for entry points only (pyproject.toml [tool.importlinter])."""
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                          "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "5 kept, 0 broken" in run.stdout


@pytest.mark.parametrize("cyclic", [True, False])
def test_the_cycle_contract_fails_on_a_cycle_however_far_round(tmp_path, cyclic):
    import grimp

    from tests.import_contracts import NoModuleCycles

    pkg = tmp_path / "demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from demo import b\n")
    (pkg / "b.py").write_text("from demo import c\n")
    (pkg / "c.py").write_text("from demo import a\n" if cyclic else "X = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("demo", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    contract = NoModuleCycles(name="t", session_options={}, contract_options={"packages": ["demo"]})
    check = contract.check(graph, verbose=False)
    assert check.kept is (not cyclic)
    if cyclic:
        assert sorted(check.metadata["cycles"][0]) == [("demo.a", "demo.b"), ("demo.b", "demo.c"),
                                                       ("demo.c", "demo.a")]


def test_no_import_is_guarded_by_except_import_error():
    """A broken import must fail loudly, not silently switch a feature off: an ``except
    ImportError`` may only re-raise it as a clearer error (a missing optional package)."""
    found = []
    for file, node in code_nodes():
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            names = [n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)]
            reraises = any(isinstance(n, ast.Raise) for n in ast.walk(node))
            if ("ImportError" in names or "ModuleNotFoundError" in names) and not reraises:
                found.append(f"{file}:{node.lineno}")
    assert not found, f"import guards: {found}"


def test_one_way_to_the_broker():
    """``workers.broker.get_broker()``: never Dramatiq's implicit global, never a side-effect import."""
    found = []
    for file, node in code_nodes(skip=("workers/broker.py",)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get_broker"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "dramatiq"):
            found.append(f"{file}:{node.lineno} dramatiq.get_broker()")
        if isinstance(node, ast.Import) and any(a.name == "workers.broker" for a in node.names):
            found.append(f"{file}:{node.lineno} import workers.broker")
    assert not found, found


def test_every_actor_runs_on_the_queue_the_table_names_and_a_pool_owns_it():
    import jobs  # noqa: F401  (declares every actor)
    from app.queues import QUEUES, queue_of
    from workers.broker import get_broker

    broker = get_broker()
    assert len(broker.actors) >= 20
    for name in broker.actors:
        queue = broker.get_actor(name).queue_name
        assert queue == queue_of(name), name
        assert queue in QUEUES, f"{name}: queue {queue!r} has no owner pool"


def test_queues_are_named_in_one_table():
    """No ``queue_name="..."`` literal outside app/queues.py: actors and enqueues by name route there."""
    found = [f"{file}:{node.value.lineno}" for file, node in code_nodes(skip=("app/queues.py",))
             if isinstance(node, ast.keyword) and node.arg == "queue_name" and isinstance(node.value, ast.Constant)]
    assert not found, found


#: constants of another vocabulary that happen to end in STATUSES
OTHER_VOCABULARIES = {("app/transports/base.py", "REPORTED_STATUSES"), ("app/transports/base.py", "ACK_STATUSES"),
                      ("app/webhooks/delivery.py", "RETRY_AFTER_STATUSES")}


def test_statuses_are_declared_in_one_place_per_domain():
    found = []
    for path in code_files():
        if path.name == "statuses.py":
            continue
        for node in parsed(path).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name) and (t.id.endswith("STATUSES") or t.id in ("LIVE", "ROLES")):
                    if (rel(path), t.id) not in OTHER_VOCABULARIES and not (
                            rel(path) == "app/security/permissions.py" and t.id == "ROLES"):
                        found.append(f"{rel(path)}:{node.lineno} {t.id}")
    assert not found, f"status vocabularies outside statuses.py: {found}"


def test_nothing_reads_the_environment_but_config():
    reads = [f"{file}:{node.lineno}" for file, node in code_nodes(extra=(ROOT / "wsgi.py",))
             if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
             and isinstance(node.value, ast.Name) and node.value.id == "os"]
    assert not reads, reads


def test_long_modules_say_why():
    long = []
    for path in code_files():
        lines = path.read_text().count("\n")
        if lines > MAX_LINES:
            doc = ast.get_docstring(parsed(path)) or ""
            if "Size:" not in doc:
                long.append(f"{rel(path)} ({lines} lines)")
    assert not long, f"over {MAX_LINES} lines without a 'Size:' reason in the docstring: {long}"


def test_config_imports_nothing_of_the_app():
    tree = parsed(ROOT / "config.py")
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"app", "jobs", "workers", "tests"}


def test_the_model_registry_maps_every_table_of_schema_sql():
    """Entry points import app.models; what it registers is the whole schema (tests/test_schema.py
    compares the columns)."""
    code = textwrap.dedent("""
        import re, sys
        import app.models
        from app.db import Base
        from config import ROOT
        tables = set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?([a-z_]+)", (ROOT / "schema.sql").read_text()))
        missing = tables - set(Base.metadata.tables)
        print(sorted(missing)); sys.exit(1 if missing else 0)
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
