"""The demo's console users: who can sign in to ``/console`` after ``make demo`` and how.

Named users are made with the collector's own CLI (``lienwatch collector users add
--password-stdin``), one per role, plus a Chinese-speaking analyst, all with one demo
password (a demo, not a deployment).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .chain import lienwatch_argv
from .errors import RigError

__all__ = ["DEMO_PASSWORD", "DEMO_USERS", "add_demo_users", "console_lines"]

DEMO_PASSWORD = "lienwatch-demo-2026"  # noqa: S105 (a demo password, printed by the demo)
#: user name, role, locale, display name
DEMO_USERS: tuple[tuple[str, str, str, str], ...] = (
    ("analyst", "risk_analyst", "en", "Demo Analyst"),
    ("fenxi", "risk_analyst", "zh-CN", "演示分析员"),
    ("collector", "collections", "en", "Demo Collector"),
    ("auditor", "auditor", "en", "Demo Auditor"),
    ("admin", "admin", "en", "Demo Admin"),
)


def add_demo_users(collector_config: Path, *, timeout: float = 60.0) -> None:
    """Create the demo users in the collector's database.

    Raises:
        RigError: a ``users add`` failed (its stderr is in the message).
    """
    for username, role, locale, display in DEMO_USERS:
        argv = lienwatch_argv("collector", "users", "add", username, "--role", role, "--locale", locale,
                              "--display-name", display, "--password-stdin", "--config", str(collector_config))
        done = subprocess.run(argv, input=DEMO_PASSWORD + "\n", capture_output=True, text=True, timeout=timeout,
                              check=False)
        if done.returncode != 0:
            raise RigError(f"lienwatch collector users add {username} exited {done.returncode}:\n{done.stderr[-2000:]}")


def console_lines(api_url: str) -> list[str]:
    """What the demo prints about the console: its address and the users."""
    users = ", ".join(f"{name} ({role}{', 中文' if locale == 'zh-CN' else ''})" for name, role, locale, _ in DEMO_USERS)
    return [
        f"Console: {api_url}/console   users: {users}",
        f"         password for every demo user: {DEMO_PASSWORD}",
    ]
