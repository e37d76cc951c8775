"""Counters cross threads as immutable snapshots, and a state message never drops them silently."""

from __future__ import annotations

import pytest

import protocol
from edge.counter_board import OMITTED, PublishedCounters, counter_values, state_counters
from edge.rules import Engine, RulesConfig


def test_a_published_snapshot_does_not_change_with_its_source() -> None:
    counters = {"records_in": 1}
    published = PublishedCounters()
    published.publish(counters)
    seen = published.latest
    counters["records_in"] = 2
    counters["new"] = 1
    assert dict(seen) == {"records_in": 1}
    with pytest.raises(TypeError):
        seen["records_in"] = 5  # type: ignore[index]
    published.publish(counters)
    assert dict(published.latest) == {"records_in": 2, "new": 1}
    assert dict(seen) == {"records_in": 1}


def test_state_counters_fit_the_protocol_limit_and_say_what_they_left_out() -> None:
    limit = protocol.LIMITS.MAX_STATE_COUNTERS
    parts = [{f"c{i:04d}": i for i in range(limit + 10)}, {"c0000": 7}]
    merged = state_counters(parts)
    assert len(merged) == limit
    assert merged[OMITTED] == 11
    assert merged["c0000"] == 7  # later parts win
    assert state_counters([{"a": 1}, {"b": 2}]) == {"a": 1, "b": 2}


def test_counter_values_reads_the_engine_counters_with_their_zeros() -> None:
    values = counter_values(Engine(RulesConfig()).counters)
    assert values["fixes"] == 0
    assert counter_values({"a": 1, "b": -1, "c": True, "d": "x"}) == {"a": 1}
