"""The README documents every setting of config.py (the table is generated from it) and the two commands."""

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


def test_readme_gives_the_two_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text
