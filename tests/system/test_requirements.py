"""requirements.txt and requirements-dev.txt pin what the code uses: every pin is imported by the
code (app, workers, jobs, tests, bench), or its line says why it is installed anyway (a plugin, a
binary, an optional backend of another package); and every third-party module the code imports is
pinned, so an upgrade of something we call directly is a decision, not an accident."""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys

from tests.procs import ROOT

FIRST_PARTY = {"app", "workers", "jobs", "tests", "config", "wsgi", "bench"}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(\[[^\]]*\])?==[^\s#]+\s*(#\s*(?P<why>.+))?$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str | None]:
    """{distribution: the comment of its line, if any} of both files."""
    found = {}
    for path in (ROOT / "requirements.txt", ROOT / "requirements-dev.txt"):
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", "-r")):
                continue
            match = PIN.match(line)
            assert match, f"{path.name}: not an exact pin: {line!r}"
            found[canonical(match["name"])] = match["why"]
    return found


@functools.cache
def provided_by() -> dict[str, list[str]]:
    """{top-level module: the installed distributions providing it} (slow to build: once)."""
    return importlib.metadata.packages_distributions()


@functools.cache
def imported_modules() -> frozenset[str]:
    """Top-level names of every absolute import in the project's Python files."""
    names = set()
    for path in ROOT.rglob("*.py"):
        if {".venv", ".git", "var"} & set(path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return frozenset(names - set(sys.stdlib_module_names) - FIRST_PARTY)


def distributions_of(modules: frozenset[str] | set[str]) -> dict[str, set[str]]:
    """{distribution: the imported modules it provides}."""
    out: dict[str, set[str]] = {}
    for module in modules:
        for dist in provided_by().get(module, []):
            out.setdefault(canonical(dist), set()).add(module)
    return out


def test_every_pin_is_imported_or_says_why_it_is_there():
    used = distributions_of(imported_modules())
    unexplained = sorted(name for name, why in pins().items() if name not in used and not why)
    assert not unexplained, (f"pinned but imported nowhere, and no comment on the line says why: {unexplained} "
                             "(remove the pin, or say what uses it)")


def test_every_imported_package_is_pinned():
    modules = imported_modules()
    unknown = sorted(m for m in modules if m not in provided_by())
    assert not unknown, f"imported but not installed: {unknown}"
    missing = sorted(f"{dist} ({', '.join(sorted(mods))})" for dist, mods in distributions_of(modules).items()
                     if dist not in pins())
    assert not missing, f"imported but not pinned in requirements*.txt: {missing}"


def test_the_checks_can_fail():
    assert "flask-limiter" not in pins() and "celery" not in pins(), "pinned while nothing imports them"
    assert canonical("Flask_Limiter") == "flask-limiter"
    assert distributions_of({"jwt", "yaml"}) == {"pyjwt": {"jwt"}, "pyyaml": {"yaml"}}
