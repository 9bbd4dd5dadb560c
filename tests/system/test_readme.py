"""The README documents every setting of config.py (the table is generated from it) and the two commands."""
import shutil
import subprocess

import config
from tests.procs import ROOT

README = ROOT / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def test_every_setting_is_documented_in_the_readme():
    text = README.read_text()
    assert BEGIN in text and END in text, "README lost its generated settings table markers"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    missing = [s.name for s in config.SETTINGS if f"`{s.name}`" not in table]
    assert not missing, f"settings missing from README: {missing}"
    assert table == config.settings_table(), (
        "README's settings table is stale; regenerate it with: "
        "python -c 'import config; print(config.settings_table())'")


def _section(text: str, title: str) -> str:
    assert f"\n## {title}\n" in text, f"README lost its section {title!r}"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_gives_the_two_commands():
    """The "Two commands" table names exactly ``make run`` and ``make test``, as commands (code), the
    quick start begins with the first, and the Makefile has both targets doing what the table says."""
    text = README.read_text()
    rows = [line.strip().strip("|").split("|", 1) for line in _section(text, "Two commands").splitlines()
            if line.startswith("|")][2:]  # below the header and its |---| line
    assert [command.strip() for command, _ in rows] == ["`make run`", "`make test`"]
    quickstart = _section(text, "Quickstart: the whole loop in five minutes")
    assert quickstart.lstrip().startswith("Run `make run` in one shell"), quickstart[:200]

    assert shutil.which("make"), "make runs the two commands: install it (the README's first step needs it)"
    for target, recipe in (("run", "-m workers dev"), ("test", "-m tests.run")):
        dry = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert recipe in dry.stdout.splitlines()[-1], dry.stdout
