"""firmware_sim's layout: the simulator is an independent peer, the rig sits beside it.

Read from the source (``ast``), not by importing, so the check sees lazy imports too.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import firmware_sim
import firmware_sim.rig

PACKAGE_DIR = Path(firmware_sim.__file__).resolve().parent
RIG_DIR = PACKAGE_DIR / "rig"
ENTRY_MODULES = ("__init__.py", "__main__.py", "cli.py")  # may import the rig (``lienwatch demo``)
SIMULATOR_MODULES = sorted(p for p in PACKAGE_DIR.glob("*.py") if p.name not in ENTRY_MODULES)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = "firmware_sim.rig" if path.parent == RIG_DIR else "firmware_sim"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.add(node.module)
    return names


def test_the_simulator_modules_are_public_and_complete() -> None:
    assert [p.stem for p in SIMULATOR_MODULES] == [
        "errors", "fleet", "gnss", "load", "nmea", "pace", "pty", "record", "route", "runner", "scenario", "simulation",
        "slcan", "traction_battery", "vehicle",
    ]  # fmt: skip
    for name in firmware_sim.__all__:
        assert getattr(firmware_sim, name) is not None, name


@pytest.mark.parametrize("path", SIMULATOR_MODULES, ids=lambda p: p.stem)
def test_a_simulator_module_imports_neither_the_agent_nor_the_collector_nor_the_rig(path: Path) -> None:
    foreign = {
        name
        for name in imported_modules(path)
        if name.split(".")[0] in ("edge", "collector") or name.startswith("firmware_sim.rig")
    }
    assert not foreign, f"{path.name} imports {sorted(foreign)}"


@pytest.mark.parametrize("path", sorted(RIG_DIR.glob("*.py")), ids=lambda p: p.stem)
def test_the_rig_drives_the_other_parts_only_as_processes(path: Path) -> None:
    foreign = {
        name
        for name in imported_modules(path)
        if name.split(".")[0] in ("edge", "collector")
        or (name.startswith("firmware_sim.") and not name.startswith("firmware_sim.rig"))
    }
    assert not foreign, f"rig/{path.name} imports {sorted(foreign)}"


def test_the_command_line_entry_points_exist() -> None:
    cli = importlib.import_module("firmware_sim.cli")
    assert callable(cli.main)
    assert callable(cli.demo_main)
    assert set(firmware_sim.rig.__all__) >= {"ChainRig", "Mosquitto", "Postgres", "RigError", "ServiceError"}
    assert issubclass(firmware_sim.rig.ServiceError, firmware_sim.rig.RigError)
