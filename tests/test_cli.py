"""The ``lienwatch`` dispatcher, its entry-point registry and the edge/collector import boundary."""

from __future__ import annotations

import sys

import pytest

from edge.cli import main as edge_main
from protocol.cli import ENTRY_POINT_GROUP, commands, lienwatch_version, main
from tests.child_processes import ChildProcesses

#: Who owns which subcommand (docs: the seams). The registry must say exactly this.
OWNERS = {
    "agent": "edge",
    "gnss": "edge",
    "can": "edge",
    "replay": "edge",
    "keys": "protocol",
    "inspect": "protocol",
    "collector": "collector",
    "sim": "firmware_sim",
    "demo": "firmware_sim",
    "risk": "collector",
}


def test_each_side_registers_its_own_subcommands() -> None:
    registered = commands()
    assert set(registered) == set(OWNERS), ENTRY_POINT_GROUP
    for name, entry in registered.items():
        assert entry.module.split(".")[0] == OWNERS[name], (name, entry.value)
    assert set(commands("edge")) == {"agent", "gnss", "can", "replay"}


def test_usage_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in OWNERS:
        assert f"  {name}" in out
    assert "  agent      run the edge agent, or check its configuration." in out


def test_no_arguments_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: lienwatch COMMAND" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lienwatch {lienwatch_version()}"
    assert lienwatch_version() != "unknown"


def test_python_m_edge_offers_only_the_edge_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert edge_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: python -m edge COMMAND" in out
    assert "  agent" in out
    assert "collector" not in out
    assert edge_main(["sim"]) == 2
    assert "unknown command 'sim'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(OWNERS))
def test_every_command_entry_point_loads_a_main(name: str) -> None:
    assert callable(commands()[name].load())


def test_dispatch_runs_the_chosen_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--device", "car 1", "--out", "/nonexistent"]) == 1
    assert "must match [A-Za-z0-9_-]{1,64}" in capsys.readouterr().err


def test_edge_side_never_imports_the_collector_stack(processes: ChildProcesses) -> None:
    """A vehicle terminal installs only the edge extra: nothing on the agent's path may need FastAPI."""
    code = (
        "import sys\n"
        "import edge, edge.cli, edge.agent, edge.cli.agent, edge.cli.gnss, edge.cli.can, edge.cli.replay\n"
        "import protocol.cli, protocol.cli.keys, protocol.cli.inspect, edge.rules, edge.gnss, edge.canbus\n"
        "import edge.uplink\n"
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


def test_the_dispatcher_imports_no_side_until_a_command_runs(processes: ChildProcesses) -> None:
    """Listing the registry loads no driver and neither side (numpy comes with protocol's codec)."""
    code = (
        "import sys, protocol.cli\n"
        "protocol.cli.commands()\n"
        "print(','.join(m for m in ('can', 'cantools', 'serial', 'paho', 'edge', 'collector', 'firmware_sim',"
        " 'fastapi', 'sqlalchemy') if m in sys.modules))"
    )
    result = processes.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("argv", [["--help"], ["agent", "--help"], ["collector", "--help"], ["demo", "--help"]])
def test_help_shows_no_rest_markup(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``lienwatch agent --help`` once printed ````lienwatch agent````: docstring markup is not help text."""
    code: object = 0
    try:
        code = main(argv)
    except SystemExit as done:  # argparse's --help
        code = done.code
    assert code == 0
    out = capsys.readouterr().out
    assert out
    assert "``" not in out
