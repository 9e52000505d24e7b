"""`ioc keys`: a key printed once, listed by prefix without its secret, revoked; and the API
accepting it until it is revoked."""

from __future__ import annotations

import httpx

from tests.support.cli import run_ioc
from tests.support.server import served


def test_keys_are_made_listed_and_revoked_from_the_command_line(db_url: str) -> None:
    env = {"IOC_DATABASE_URL": db_url, "IOC_PROFILE": "mekong"}
    made = run_ioc("keys", "create", "--name", "Trực ban ca 1", "--role", "operator", **env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("ioc_") and "\n" not in key  # stdout holds the key alone
    prefix = key.split("_")[1]
    assert prefix in made.stderr and "shown only now" in made.stderr

    listed = run_ioc("keys", "list", **env)
    assert listed.returncode == 0
    assert prefix in listed.stdout and "Trực ban ca 1" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout

    with served(db_url) as base:
        ok = httpx.get(f"{base}/api/v1/alerts", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        revoked = run_ioc("keys", "revoke", prefix, **env)
        assert revoked.returncode == 0 and prefix in revoked.stdout
        # api_settings turns the key cache off in tests: refused at once
        gone = httpx.get(f"{base}/api/v1/alerts", headers={"Authorization": f"Bearer {key}"})
        assert gone.status_code == 401
    assert prefix not in run_ioc("keys", "list", **env).stdout
    assert prefix in run_ioc("keys", "list", "--all", **env).stdout

    agency = run_ioc("keys", "create", "--name", "x", "--role", "agency", **env)
    assert agency.returncode == 1
    assert agency.stderr.strip().startswith("error:") and "--sectors" in agency.stderr
    unknown = run_ioc(
        "keys", "create", "--name", "x", "--role", "agency", "--sectors", "mars", **env
    )
    assert unknown.returncode == 1 and "mars" in unknown.stderr
    bad_role = run_ioc("keys", "create", "--name", "x", "--role", "god", **env)
    assert bad_role.returncode == 2
