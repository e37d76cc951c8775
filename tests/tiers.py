"""Pytest plugin (``-p tests.tiers`` in pyproject's addopts): test tiers, applied mechanically.

Every collected test gets exactly one tier marker, derived from where it lives and which
fixtures it uses, never written by hand:

* ``hil``: a test in ``hil-tests/`` (the whole chain in separate processes);
* ``process``: a test that uses a fixture starting a process, a broker or a database
  server (:data:`PROCESS_FIXTURES`, directly or through other fixtures), or that carries
  ``mqtt``/``postgres`` (a parameter that asks for PostgreSQL at run time is marked so);
* ``unit``: everything else: in-process, no child process. This is the fast tier
  (``pytest -m unit``), and it is enforced: a unit test that starts a process fails with a
  message saying which fixture to use instead.

``mqtt`` and ``postgres`` are added the same way (from the ``mosquitto`` and
``postgres_server`` fixtures) so that ``-m "not postgres"`` works on a machine without
PostgreSQL. Every test also fails if it leaves a non-daemon thread running.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

TIERS = ("unit", "process", "hil")
#: fixtures that start a child process, a broker or a database server (tests/conftest.py)
PROCESS_FIXTURES = frozenset({"mosquitto", "open_broker", "postgres_server", "processes"})
#: fixture -> the service marker it implies
SERVICE_MARKERS = {"mosquitto": "mqtt", "open_broker": "mqtt", "postgres_server": "postgres"}
HIL_DIR = Path(__file__).resolve().parents[1] / "hil-tests"


def tier_of(item: pytest.Item) -> str:
    """The tier a collected test belongs to (see the module docstring)."""
    if HIL_DIR in item.path.parents:
        return "hil"
    uses = set(getattr(item, "fixturenames", ()))
    if uses & PROCESS_FIXTURES or any(item.get_closest_marker(m) for m in SERVICE_MARKERS.values()):
        return "process"
    return "unit"


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        by_hand = [m.name for m in item.iter_markers() if m.name in TIERS]
        if by_hand:
            raise pytest.UsageError(
                f"{item.nodeid}: tier marker {by_hand[0]!r} set by hand; tiers come from the fixtures "
                "a test uses (tests/tiers.py)"
            )
        uses = set(getattr(item, "fixturenames", ()))
        for fixture, marker in SERVICE_MARKERS.items():
            if fixture in uses and item.get_closest_marker(marker) is None:
                item.add_marker(marker)
        item.add_marker(tier_of(item))


def _refusal(what: str) -> AssertionError:
    return AssertionError(
        f"a unit-tier test started {what}: start processes through the 'processes' fixture "
        "(or 'mosquitto', 'postgres_url'), which puts the test in the 'process' tier"
    )


def _refuse_popen(self: subprocess.Popen[Any], args: Any, *_: Any, **__: Any) -> NoReturn:
    raise _refusal(repr(args))


def _refuse_os_call(*_: Any, **__: Any) -> NoReturn:
    raise _refusal("a child process (os.fork/spawn/system)")


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the unit tier, starting a child process (subprocess, fork, spawn) is an error."""
    if request.node.get_closest_marker("unit") is None:
        return
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse_popen)
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refuse_os_call)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=5)
    leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"
