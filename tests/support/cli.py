"""Run the installed `ioc` command as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

IOC = str(Path(sys.executable).with_name("ioc"))


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any IOC_* setting, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOC_")}
    env["COLUMNS"] = "200"  # rich wraps tables to the terminal width; keep rows whole
    env.update(overrides)
    return env


def run_ioc(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `ioc ARGS...` to completion with IOC_* taken from `env` only."""
    return subprocess.run(
        [IOC, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(**env),
        check=False,
    )
