"""Field encryption (app/security/crypto.py), key rotation (app/security/rotation.py and
``python -m app encryption rotate|status``) and the refusal to run production without secrets."""
from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
from contextlib import contextmanager

import pytest

from app.security import crypto, rotation
from config import ROOT, Settings, check_production_settings, parse_encryption_keys, settings
from tests.factories import make_client, make_client_session, make_proxy, make_webhook

OLD = "k1:" + base64.b64encode(b"\x01" * 32).decode()
NEW = "k2:" + base64.b64encode(b"\x02" * 32).decode()
OTHER = "k9:" + base64.b64encode(b"\x09" * 32).decode()


@contextmanager
def keys(spec: str):
    """Run the block with APP_ENCRYPTION_KEYS=spec, then restore the suite's keys."""
    before = settings.APP_ENCRYPTION_KEYS
    settings.override(APP_ENCRYPTION_KEYS=spec)
    crypto.reset_keys()
    try:
        yield
    finally:
        settings.override(APP_ENCRYPTION_KEYS=before)
        crypto.reset_keys()


# ----------------------------------------------------------------------------- values


def test_round_trip_of_text_bytes_and_json():
    with keys(OLD):
        assert crypto.decrypt(crypto.encrypt("s3cret ✓")) == "s3cret ✓"
        assert crypto.decrypt_bytes(crypto.encrypt(b"\x00\xff")) == b"\x00\xff"
        doc = {"access_token": "EAAG...", "app_secret": "abc", "n": [1, 2]}
        assert crypto.decrypt_json(crypto.encrypt_json(doc)) == doc
        assert crypto.decrypt_json(None) is None


def test_values_name_their_key_and_never_repeat():
    with keys(OLD):
        a, b = crypto.encrypt("same"), crypto.encrypt("same")
    assert a != b  # a fresh 96-bit nonce each time
    for value in (a, b):
        version, kid, payload = value.split(":", 2)
        assert (version, kid) == ("v1", "k1")
        raw = base64.urlsafe_b64decode(payload)
        assert len(raw) == 12 + len("same") + 16  # nonce | ciphertext | GCM tag
        assert b"same" not in raw
    assert crypto.key_id_of(a) == "k1"


def test_tampering_is_detected():
    with keys(f"{NEW},{OLD}"):
        value = crypto.encrypt("pay me")
        version, kid, payload = value.split(":", 2)
        raw = bytearray(base64.urlsafe_b64decode(payload))
        for i in (0, 12, len(raw) - 1):  # nonce, ciphertext, tag
            flipped = bytearray(raw)
            flipped[i] ^= 1
            with pytest.raises(crypto.DecryptionError, match="authentication"):
                crypto.decrypt(f"{version}:{kid}:{base64.urlsafe_b64encode(bytes(flipped)).decode()}")
        # the same sealed bytes presented as another (configured) key's value
        with pytest.raises(crypto.DecryptionError, match="authentication"):
            crypto.decrypt(f"v1:k1:{payload}")
        with pytest.raises(crypto.DecryptionError, match="authentication"):
            crypto.decrypt(f"v1:k2:{payload[:-8]}")
        for malformed in ("", "plaintext", "v1:k2", "v2:k2:" + payload):
            with pytest.raises(crypto.DecryptionError):
                crypto.decrypt(malformed)


def test_unknown_key_id_is_refused():
    with keys(OTHER):
        value = crypto.encrypt("x")
    with keys(f"{NEW},{OLD}"), pytest.raises(crypto.DecryptionError, match="'k9'"):
        crypto.decrypt(value)


def test_older_keys_still_open_values_new_ones_are_sealed_with_the_newest():
    with keys(OLD):
        old_value = crypto.encrypt("before rotation")
    with keys(f"{NEW},{OLD}"):
        assert crypto.decrypt(old_value) == "before rotation"
        assert crypto.key_id_of(crypto.encrypt("after")) == "k2"
        assert crypto.key_ids() == ["k2", "k1"]
        resealed = crypto.reseal(old_value)
        assert crypto.key_id_of(resealed) == "k2" and crypto.decrypt(resealed) == "before rotation"
        assert crypto.reseal(resealed) is None
    with keys(NEW):
        assert crypto.decrypt(resealed) == "before rotation"


@pytest.mark.parametrize("spec, message", [
    ("", "empty"),
    ("k1", "kid:base64key"),
    ("k1:" + base64.b64encode(b"short").decode(), "32 bytes"),
    (f"{OLD},{OLD}", "twice"),
])
def test_malformed_key_lists_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_encryption_keys(spec)


# ----------------------------------------------------------------------------- production refusal


def _production(**env) -> Settings:
    return Settings.from_env({"APP_ENV": "production", "DATA_DIR": "/nonexistent", **env})


GOOD = {"SECRET_KEY": "s" * 48, "APP_ENCRYPTION_KEYS": NEW, "API_KEY_PEPPER": "p" * 32}


def test_production_refuses_to_start_without_each_secret():
    check_production_settings(_production(**GOOD))  # complete: starts
    for missing in GOOD:
        with pytest.raises(SystemExit, match=missing):
            check_production_settings(_production(**{k: v for k, v in GOOD.items() if k != missing}))
    with pytest.raises(SystemExit) as exc:
        check_production_settings(_production())
    assert all(name in str(exc.value) for name in GOOD)
    with pytest.raises(SystemExit, match="SECRET_KEY must be at least 32"):
        check_production_settings(_production(**{**GOOD, "SECRET_KEY": "short"}))
    with pytest.raises(SystemExit, match="APP_ENCRYPTION_KEYS: .*32 bytes"):
        check_production_settings(_production(**{**GOOD, "APP_ENCRYPTION_KEYS": "k1:c2hvcnQ="}))
    # production never falls back to a generated key
    with pytest.raises(SystemExit, match="APP_ENCRYPTION_KEYS"):
        _production().secret("APP_ENCRYPTION_KEYS")


def test_development_generates_a_key_into_data_dir(tmp_path):
    dev = Settings.from_env({"APP_ENV": "development", "DATA_DIR": str(tmp_path)})
    check_production_settings(dev)
    spec = dev.secret("APP_ENCRYPTION_KEYS")
    assert [kid for kid, _ in parse_encryption_keys(spec)] == ["k1"]
    path = tmp_path / "secrets" / "app_encryption_keys"
    assert path.read_text().strip() == spec
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dev.secret("APP_ENCRYPTION_KEYS") == spec  # stable across restarts


def test_create_app_refuses_production_without_secrets(override_settings):
    from app import create_app

    with override_settings(APP_ENV="production", SECRET_KEY="", APP_ENCRYPTION_KEYS="", API_KEY_PEPPER=""):
        with pytest.raises(SystemExit, match="SECRET_KEY, APP_ENCRYPTION_KEYS, API_KEY_PEPPER must be set"):
            create_app()


@pytest.mark.parametrize("argv", [["-m", "workers", "run", "--pool", "messages"], ["-m", "workers", "scheduler"],
                                  ["-m", "app", "encryption", "status"]])
def test_processes_refuse_production_without_secrets(argv):
    env = {**os.environ, "APP_ENV": "production", "SECRET_KEY": "", "APP_ENCRYPTION_KEYS": "", "API_KEY_PEPPER": ""}
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "SECRET_KEY, APP_ENCRYPTION_KEYS, API_KEY_PEPPER must be set when APP_ENV=production" in result.stderr


# ----------------------------------------------------------------------------- rotation


def test_every_encrypted_column_of_the_schema_is_found():
    schema = (ROOT / "schema.sql").read_text()
    declared = set()
    for table, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\n\);", schema, re.S):
        declared |= {f"{table}.{col}" for col in re.findall(r"^\s+(\w+_encrypted)\s", body, re.M)}
    found = {c.name for c in rotation.encrypted_columns()}
    assert found == declared
    assert {"clients.secrets_encrypted", "client_sessions.state_encrypted", "proxies.password_encrypted",
            "webhooks.secret_encrypted", "webhooks.previous_secret_encrypted"} <= found


def _seed(session, n_clients: int = 3) -> dict:
    """Encrypted values in every encrypted column (under the keys in force), committed."""
    plain = {}
    proxy = make_proxy(session, password_encrypted=crypto.encrypt("proxy-pass"))
    plain[("proxies", proxy.id)] = "proxy-pass"
    for i in range(n_clients):
        client = make_client(session, transport="cloud", proxy_id=proxy.id,
                             secrets_encrypted=crypto.encrypt_json({"access_token": f"tok{i}"}),
                             organization_id=proxy.organization_id)
        plain[("clients", client.id)] = json.dumps({"access_token": f"tok{i}"}, separators=(",", ":"))
        make_client_session(session, client_id=client.id, state_encrypted=crypto.encrypt(f"state{i}"))
        plain[("client_sessions", client.id)] = f"state{i}"
    hook = make_webhook(session, secret_encrypted=crypto.encrypt("whsec_new"),
                        previous_secret_encrypted=crypto.encrypt("whsec_old"))
    plain[("webhooks", hook.id)] = ("whsec_new", "whsec_old")
    make_webhook(session, secret_encrypted=crypto.encrypt("whsec_only"), previous_secret_encrypted=None)
    session.commit()
    return plain


def _stored(session) -> dict[str, list[str]]:
    from sqlalchemy import text

    out = {}
    for ec in rotation.encrypted_columns():
        out[ec.name] = [v for (v,) in session.execute(
            text(f"SELECT {ec.column.name} FROM {ec.table.name} WHERE {ec.column.name} IS NOT NULL"))]
    return out


def test_rotate_re_encrypts_everything_under_the_newest_key(committed):
    with keys(OLD):
        plain = _seed(committed)
    with keys(f"{NEW},{OLD}"):
        assert rotation.status() == {"client_sessions.state_encrypted": {"k1": 3}, "clients.secrets_encrypted": {"k1": 3},
                                     "proxies.password_encrypted": {"k1": 1}, "webhooks.previous_secret_encrypted": {"k1": 1},
                                     "webhooks.secret_encrypted": {"k1": 2}}
        reports = {r.column: r for r in rotation.rotate(batch_size=2)}  # several batches per column
        assert {c: r.rotated for c, r in reports.items()} == {
            "client_sessions.state_encrypted": 3, "clients.secrets_encrypted": 3, "proxies.password_encrypted": 1,
            "webhooks.previous_secret_encrypted": 1, "webhooks.secret_encrypted": 2}
        assert all(r.failed == 0 and r.current == r.rotated for r in reports.values())
        assert all(set(per_kid) == {"k2"} for per_kid in rotation.status().values())
        # idempotent: nothing left to do
        assert sum(r.rotated for r in rotation.rotate()) == 0
    committed.expire_all()
    # the old key can now be removed: everything opens with the new one alone
    with keys(NEW):
        from app.clients.models import Client, ClientSession, Proxy
        from app.webhooks.models import Webhook

        for (table, row_id), expected in plain.items():
            if table == "proxies":
                assert crypto.decrypt(committed.get(Proxy, row_id).password_encrypted) == expected
            elif table == "clients":
                assert crypto.decrypt(committed.get(Client, row_id).secrets_encrypted) == expected
            elif table == "client_sessions":
                assert crypto.decrypt(committed.get(ClientSession, row_id).state_encrypted) == expected
            else:
                hook = committed.get(Webhook, row_id)
                assert (crypto.decrypt(hook.secret_encrypted), crypto.decrypt(hook.previous_secret_encrypted)) == expected


def test_rotate_leaves_unreadable_values_alone_and_says_so(committed):
    with keys(OTHER):
        lost = make_proxy(committed, password_encrypted=crypto.encrypt("under a key nobody has")).password_encrypted
        committed.commit()
    with keys(OLD):
        _seed(committed, n_clients=1)
    with keys(f"{NEW},{OLD}"):
        reports = {r.column: r for r in rotation.rotate()}
    proxies = reports["proxies.password_encrypted"]
    assert (proxies.rotated, proxies.failed) == (1, 1)
    assert "'k9'" in proxies.failures[0]
    assert lost in _stored(committed)["proxies.password_encrypted"]


def _cli(*args: str, keys_spec: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "APP_ENCRYPTION_KEYS": keys_spec}
    return subprocess.run([sys.executable, "-m", "app", "encryption", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_rotation_procedure(committed):
    """The documented procedure (docs/security.md): add the new key first, rotate, check the
    status, remove the old key."""
    with keys(OLD):
        _seed(committed)
    both = f"{NEW},{OLD}"
    status = _cli("status", "--json", keys_spec=both)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["totals"] == {"k1": 10} and report["removable"] == [] and report["newest"] == "k2"

    rotated = _cli("rotate", "--batch-size", "4", keys_spec=both)
    assert rotated.returncode == 0, rotated.stderr
    assert "clients.secrets_encrypted: 3 re-encrypted" in rotated.stdout
    assert "total: 10 re-encrypted, 0 unreadable" in rotated.stdout

    status = _cli("status", keys_spec=both)
    assert "total under k2: 10 (newest)" in status.stdout
    assert "no value uses k1: removable from APP_ENCRYPTION_KEYS" in status.stdout
    assert json.loads(_cli("status", "--json", keys_spec=NEW).stdout)["totals"] == {"k2": 10}


def test_cli_rotate_fails_loudly_on_unreadable_values(committed):
    with keys(OTHER):
        make_proxy(committed, password_encrypted=crypto.encrypt("x"))
        committed.commit()
    result = _cli("rotate", keys_spec=f"{NEW},{OLD}")
    assert result.returncode != 0
    assert "unreadable" in result.stdout and "'k9'" in result.stdout
    assert "left unchanged" in result.stderr
    status = json.loads(_cli("status", "--json", keys_spec=f"{NEW},{OLD}").stdout)
    assert status["unknown"] == ["k9"]
