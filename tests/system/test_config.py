"""config.py as a user meets it: a malformed setting stops the process with a message naming it,
the README's table lists every field, and config depends on nothing of the application."""
from __future__ import annotations

import ast
import base64
import ipaddress
import subprocess
import sys
from dataclasses import fields

import pytest

import config
from config import ROOT, Settings, check_production_settings, settings

#: set so that building Settings never looks for a running `make run`
SERVERS = {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"}


@pytest.mark.parametrize("name, value, kind", [
    ("PORT", "eighty", "int"),
    ("WEBHOOK_TIMEOUT", "soon", "float"),
    ("RATE_LIMIT_API", "100 per fortnight", "rate limit"),
    ("RATE_LIMIT_PUBLIC", "", "rate limit"),
    ("LOGIN_FAILURES_PER_IP", "many", "rate limit"),
    ("TRUSTED_PROXIES", "10.0.0.0/33", "CIDRs"),
    ("TRUSTED_PROXIES", "127.0.0.1/32,proxy.local", "CIDRs"),
])
def test_a_malformed_value_exits_naming_the_setting(name, value, kind):
    with pytest.raises(SystemExit) as exc:
        Settings.from_env({**SERVERS, name: value})
    assert str(exc.value).startswith(f"config: {name}={value!r} is not a valid ")
    assert kind in str(exc.value)


def test_a_malformed_value_stops_a_process_at_start():
    env = {"PATH": "/usr/bin:/bin", **SERVERS, "RATE_LIMIT_PUBLIC": "lots"}
    result = subprocess.run([sys.executable, "-c", "import config"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "config: RATE_LIMIT_PUBLIC='lots' is not a valid rate limit" in result.stderr


def test_a_bad_encryption_key_exits_naming_the_setting_but_not_the_key():
    short = "k1:" + base64.b64encode(b"too short").decode()
    with pytest.raises(SystemExit, match="APP_ENCRYPTION_KEYS: .*32 bytes") as exc:
        check_production_settings(Settings.from_env({**SERVERS, "APP_ENCRYPTION_KEYS": short}))
    assert short not in str(exc.value)


def test_values_are_parsed_once_into_their_types():
    built = Settings.from_env({**SERVERS, "PORT": "8080", "ALLOW_SIGNUP": "no", "WEBHOOK_TIMEOUT": "2.5",
                               "TRUSTED_PROXIES": "10.0.0.1/8, ::1/128", "RATE_LIMIT_API": "10/second; 100/hour",
                               "LOGIN_FAILURES_PER_ACCOUNT": "3 per 5 minutes"})
    assert (built.PORT, built.ALLOW_SIGNUP, built.WEBHOOK_TIMEOUT) == (8080, False, 2.5)
    assert built.TRUSTED_PROXIES == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert built.RATE_LIMIT_API == ((10, 1), (100, 3600))
    assert built.LOGIN_FAILURES_PER_ACCOUNT == (3, 300)
    assert built.RATE_LIMIT_PRINCIPAL is None, "empty: the API limit applies"
    assert Settings.from_env({**SERVERS, "TRUSTED_PROXIES": ""}).TRUSTED_PROXIES == (), "empty: trust none"


def test_override_parses_text_and_takes_back_parsed_values():
    before = {name: getattr(settings, name) for name in ("PORT", "TRUSTED_PROXIES", "RATE_LIMIT_PUBLIC")}
    settings.override(PORT="4000", TRUSTED_PROXIES=["10.0.0.5/32"], RATE_LIMIT_PUBLIC="2 per minute")
    assert settings.PORT == 4000
    assert settings.TRUSTED_PROXIES == (ipaddress.ip_network("10.0.0.5/32"),)
    assert settings.RATE_LIMIT_PUBLIC == ((2, 60),)
    settings.override(**before)
    assert {name: getattr(settings, name) for name in before} == before
    with pytest.raises(KeyError):
        settings.override(PORT="5000", NO_SUCH_SETTING=1)
    with pytest.raises(SystemExit, match="RATE_LIMIT_PUBLIC"):
        settings.override(PORT="5000", RATE_LIMIT_PUBLIC="often")
    assert settings.PORT == before["PORT"], "a refused override changes nothing"


def test_the_table_has_every_field_with_its_default_and_doc():
    table = config.settings_table()
    for f in fields(Settings):
        default = f"`{f.metadata['default']}`" if f.metadata["default"] else "—"
        assert f"| `{f.name}` | {default} | {f.metadata['doc']} |" in table.splitlines()
    assert len(table.splitlines()) == 2 + len(fields(Settings))


def test_every_default_is_valid():
    defaults = Settings.from_env({**SERVERS})
    assert defaults.PORT == 3002 and defaults.RATE_LIMIT_PUBLIC == ((100, 900),)


def test_config_imports_nothing_from_the_application():
    tree = ast.parse((ROOT / "config.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    ours = sorted(m for m in imported if m.split(".")[0] in ("app", "jobs", "workers", "tests"))
    assert not ours, f"config.py imports {ours}: the application imports config, not the other way round"
