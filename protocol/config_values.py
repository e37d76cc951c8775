"""One shared coercion of configuration values, used by the agent and the collector.

Both programs read a TOML file and lay ``LIENWATCH_*`` environment variables over it. The
environment only carries text, so booleans and durations arrive as strings; TOML gives
native values. This module turns either into the typed value, and finds environment
variables of a program's prefix that name no setting (a typo such as
``LIENWATCH_MQQT_PORT`` must be refused, not silently ignored).

Pure: nothing here reads ``os.environ``, a file or a clock; the environment is passed in.
Each program translates :class:`ConfigValueError` into its own configuration error with
``raise ... from``, adding the setting's name.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping

__all__ = [
    "FALSE_WORDS",
    "TRUE_WORDS",
    "BoolValueError",
    "ConfigValueError",
    "DurationValueError",
    "UnknownVariableError",
    "env_overrides",
    "parse_bool",
    "parse_duration",
]

#: Text accepted as true / false (case-insensitive, surrounding blanks ignored).
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

#: Seconds per duration unit suffix.
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>ms|s|m|h|d)", re.IGNORECASE)


class ConfigValueError(ValueError):
    """Root of the errors of this module: a configuration value cannot be used.

    Attributes:
        reason: short stable slug (``invalid_bool``, ``invalid_duration``,
            ``unknown_variable``) for counters and tests.
    """

    reason = "invalid_value"


class BoolValueError(ConfigValueError):
    """A value is neither a boolean nor one of the accepted true/false words."""

    reason = "invalid_bool"


class DurationValueError(ConfigValueError):
    """A value is not a duration (a number of seconds, or a number with a unit)."""

    reason = "invalid_duration"


class UnknownVariableError(ConfigValueError):
    """An environment variable carries the program's prefix but names no setting.

    Attributes:
        names: every unknown variable, sorted.
    """

    reason = "unknown_variable"

    def __init__(self, message: str, names: tuple[str, ...]) -> None:
        super().__init__(message)
        self.names = names


def parse_bool(value: object) -> bool:
    """Return the boolean a TOML value or an environment string stands for.

    Accepts ``True``/``False``, the integers 0 and 1, and (case-insensitive, blanks
    ignored) ``1 true yes on`` / ``0 false no off``.

    Raises:
        BoolValueError: anything else, the value quoted in the message.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise BoolValueError(f"{value!r:.80} is not a boolean (true/false, yes/no, on/off, 1/0)")


def parse_duration(value: object) -> float:
    """Return a duration in seconds.

    Accepts a number of seconds (``90``, ``2.5``, also as text: ``"90"``, ``"1e3"``) or a
    number with one unit: ``ms``, ``s``, ``m``, ``h``, ``d`` (``"90s"``, ``"5m"``, ``"2h"``,
    ``"7d"``, ``"1.5 h"``).

    Raises:
        DurationValueError: a boolean, text that is neither form, a negative, infinite or
            NaN value.
    """
    seconds: float
    if isinstance(value, bool):
        raise DurationValueError(f"{value!r} is not a duration (seconds, or a number with ms/s/m/h/d)")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        match = _DURATION.fullmatch(text)
        if match is not None:
            seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"].lower()]
        else:
            try:
                seconds = float(text)
            except ValueError:
                raise DurationValueError(
                    f"{value!r:.80} is not a duration (seconds, or a number with ms/s/m/h/d, e.g. 90s, 5m, 2h, 7d)"
                ) from None
    else:
        raise DurationValueError(f"{value!r:.80} is not a duration (seconds, or a number with ms/s/m/h/d)")
    if not math.isfinite(seconds):
        raise DurationValueError(f"{value!r:.80} is not a finite duration")
    if seconds < 0:
        raise DurationValueError(f"{value!r:.80} is a negative duration")
    return seconds


def env_overrides(
    environ: Mapping[str, str],
    prefix: str,
    known: Iterable[str],
    *,
    ignore_prefixes: Iterable[str] = (),
) -> dict[str, str]:
    """Pick a program's variables out of an environment, refusing unknown ones.

    Args:
        environ: the environment (pass ``os.environ`` or a test's dict).
        prefix: the program's prefix, e.g. ``"LIENWATCH_"`` or ``"LIENWATCH_AGENT_"``.
        known: full names of the variables the program reads (``"LIENWATCH_MQTT_PORT"``).
        ignore_prefixes: prefixes inside ``prefix`` that belong to someone else (another
            program's ``LIENWATCH_AGENT_``, the test harness's ``LIENWATCH_TEST_``); their
            variables are neither returned nor refused.

    Returns:
        ``{full variable name: value}`` for every known variable present, in environment
        order.

    Raises:
        UnknownVariableError: one or more variables start with ``prefix`` (and with none of
            ``ignore_prefixes``) but are not in ``known``; the message names each, with the
            closest known name when there is one.
    """
    known_names = frozenset(known)
    skipped = tuple(ignore_prefixes)
    found: dict[str, str] = {}
    unknown: list[str] = []
    for name, value in environ.items():
        if not name.startswith(prefix) or (skipped and name.startswith(skipped)):
            continue
        if name in known_names:
            found[name] = value
        else:
            unknown.append(name)
    if unknown:
        unknown.sort()
        parts = []
        for name in unknown:
            close = difflib.get_close_matches(name, known_names, n=1)
            parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise UnknownVariableError(
            f"unknown environment variable(s) {', '.join(parts)}: no setting has that name", tuple(unknown)
        )
    return found
