"""The ``lienwatch`` dispatcher and the edge/collector import boundary."""

from __future__ import annotations

import sys

import pytest

from edge.cli import COMMANDS, main
from tests.child_processes import ChildProcesses


def test_usage_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


def test_no_arguments_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: lienwatch COMMAND" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_module_has_a_main(name: str) -> None:
    import importlib

    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.main)


def test_edge_side_never_imports_the_collector_stack(processes: ChildProcesses) -> None:
    """A vehicle terminal installs only the edge extra: nothing on the agent's path may need FastAPI."""
    code = (
        "import sys\n"
        "import edge, edge.cli, edge.agent, edge._agent_cli, edge._gnss_cli, edge._can_cli, edge._replay_cli\n"
        "import edge._keys_cli, edge._inspect_cli, edge.rules, edge.gnss, edge.canbus, edge.uplink\n"
        "bad = sorted(m for m in ('fastapi', 'sqlalchemy', 'uvicorn', 'alembic', 'collector', 'starlette')"
        " if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    result = processes.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_importing_edge_is_light(processes: ChildProcesses) -> None:
    code = (
        "import sys, edge, edge.cli\n"
        "print(','.join(m for m in ('can', 'cantools', 'numpy', 'serial') if m in sys.modules))"
    )
    result = processes.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
