"""tests/tiers.py: tiers come from the fixtures a test uses, and the unit tier starts no process.

Each check runs a small pytest session in-process (pytester) on a sample test file.
"""

from __future__ import annotations

import pytest

from tests.child_processes import ChildProcesses

INI = """[pytest]
markers =
    unit: u
    process: p
    hil: h
    mqtt: m
    postgres: pg
"""

CONFTEST = """
import pytest

@pytest.fixture
def mosquitto():
    return "broker"

@pytest.fixture
def postgres_server():
    return "server"

@pytest.fixture
def processes():
    return "children"

@pytest.fixture
def subscriber(mosquitto):
    return mosquitto

@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request):
    return request.param
"""

SAMPLE = """
import subprocess
import sys

def test_pure():
    assert 1 + 1 == 2

def test_through_a_fixture_that_uses_the_broker(subscriber):
    assert subscriber == "broker"

def test_with_children(processes):
    assert processes == "children"

def test_on_each_database(database):
    assert database in ("sqlite", "postgres")

def test_starts_a_process_without_saying_so():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


@pytest.fixture
def sample(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_sample=SAMPLE)
    return pytester


def test_each_test_gets_the_tier_of_the_fixtures_it_uses(sample: pytest.Pytester) -> None:
    items, _ = sample.inline_genitems("-p", "tests.tiers")
    marks = {item.name: sorted(m.name for m in item.iter_markers() if m.name != "parametrize") for item in items}
    assert marks == {
        "test_pure": ["unit"],
        "test_through_a_fixture_that_uses_the_broker": ["mqtt", "process"],
        "test_with_children": ["process"],
        "test_on_each_database[sqlite]": ["unit"],
        "test_on_each_database[postgres]": ["postgres", "process"],
        "test_starts_a_process_without_saying_so": ["unit"],
    }


def test_a_unit_test_that_starts_a_process_fails(sample: pytest.Pytester, processes: ChildProcesses) -> None:
    # Requesting ``processes`` puts this test in the process tier, so only the inner session's
    # guard stands between the sample test and a real child process.
    result = sample.runpytest("-p", "tests.tiers", "-m", "unit")
    result.assert_outcomes(passed=2, failed=1, deselected=3)
    result.stdout.fnmatch_lines(["*a unit-tier test started*through the 'processes' fixture*"])
    assert processes.started == []


def test_a_tier_marker_set_by_hand_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_hand="import pytest\n\n@pytest.mark.unit\ndef test_x():\n    pass\n")
    result = pytester.runpytest("-p", "tests.tiers")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*tier marker 'unit' set by hand*"])
