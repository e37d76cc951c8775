"""Applying the signed configurations the collector pushes (places, regions, rules, reporting, tracking, tier).

The :class:`~edge.uplink.ConfigGate` decides whether a message is acceptable (signature,
device, version floor); this module decides whether its body applies: every known section
is validated first (the place schema of :mod:`protocol.places`, ``[rules]`` overrides merged
over the local file, ``reporting`` merged over the local ``[reporting]``, ``tracking``, the
``tier`` section of :mod:`protocol.tier_section`, the ``keys`` announcement of
:mod:`protocol.downlink_keys`), then all are applied together, so a body is taken whole or
not at all.

Sections this agent does not know (owned by newer collector parts, docs/protocol.md section 6)
are ignored, counted (``config_unknown_sections``) and logged, so a newer collector never
locks an older agent out of the sections it does know. ``places`` (typed places) wins over
``markets`` (the same used-car markets without ``type``, kept for agents before typed places).
A known section that is absent means the agent's local default.

``tracking`` (``{"enabled": false, "reason": "settled"}``) is sent once the loan is settled
or transferred: the agent then stops collecting and sending positions. No ``tier`` section
puts the local ``[batch] max_age_s`` back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from protocol import DeviceConfig
from protocol.downlink_keys import KEYS_SECTION, announced_key
from protocol.errors import ProtocolError
from protocol.places import Place, load_places, load_regions
from protocol.tier_section import TierSection, load_tier_section

from .config import ReportingSettings, reporting_with_overrides
from .errors import EdgeError
from .rules import RulesConfig
from .seams import RulesEngine
from .structured_log import log_event
from .uplink import ConfigGate, DownlinkRejectedError

__all__ = ["BODY_SECTIONS", "DownlinkApplier", "Tracking", "load_tracking"]

log = logging.getLogger("lienwatch.agent")
#: The sections this agent applies; any other section of a body is ignored (counted, logged).
#: ``keys`` is taken by the gate (edge.downlink_trust) once the body is accepted.
BODY_SECTIONS = frozenset({"markets", "places", "regions", "rules", "reporting", "tracking", "tier", KEYS_SECTION})
MAX_TRACKING_REASON = 64


@dataclass(frozen=True, slots=True)
class Tracking:
    """Whether the agent collects and sends positions, and why not."""

    enabled: bool = True
    reason: str | None = None


def load_tracking(section: object) -> Tracking:
    """Validate a ``tracking`` section: ``{"enabled": bool, "reason": text}`` (reason optional).

    Raises:
        DownlinkRejectedError: not a map, unknown keys, ``enabled`` not a boolean, a bad reason.
    """
    if not isinstance(section, Mapping):
        raise DownlinkRejectedError("invalid_body", "configuration body 'tracking' must be a map")
    unknown = set(section) - {"enabled", "reason"}
    if unknown:
        raise DownlinkRejectedError("invalid_body", f"configuration 'tracking' has unknown keys {sorted(unknown)}")
    enabled = section.get("enabled")
    if not isinstance(enabled, bool):
        raise DownlinkRejectedError("invalid_body", "configuration 'tracking.enabled' must be true or false")
    reason = section.get("reason")
    if reason is not None and (not isinstance(reason, str) or not 1 <= len(reason) <= MAX_TRACKING_REASON):
        raise DownlinkRejectedError("invalid_body", f"'tracking.reason' must be text of 1..{MAX_TRACKING_REASON}")
    return Tracking(enabled, reason)


class DownlinkApplier:
    """Check and apply configuration messages on the engine thread.

    Args:
        gate: the downlink acceptance gate (signature, version floor, persisted state).
        engine: the rules engine the body applies to.
        local_rules: the current local ``[rules]`` (overrides are merged over it).
        base_dir: relative file names in ``rules`` overrides resolve against it.
        local_reporting: the current local ``[reporting]`` (a ``reporting`` section is merged
            over it; a body without one brings the local settings back).
        set_reporting: applies the resulting reporting settings (None: reporting is not handled).
        set_tracking: called with the tracking policy of every applied body (the default,
            enabled, when the body has no ``tracking`` section).
        on_tier: applies a ``tier`` section (None: the body has none, back to the local default).
    """

    def __init__(
        self,
        gate: ConfigGate,
        engine: RulesEngine,
        local_rules: Callable[[], RulesConfig],
        base_dir: Path,
        *,
        local_reporting: Callable[[], ReportingSettings] | None = None,
        set_reporting: Callable[[ReportingSettings], None] | None = None,
        set_tracking: Callable[[Tracking], None] | None = None,
        on_tier: Callable[[TierSection | None], None] | None = None,
    ) -> None:
        self.gate = gate
        self._engine = engine
        self._local_rules = local_rules
        self._base_dir = base_dir
        self._local_reporting = local_reporting
        self._set_reporting = set_reporting
        self._set_tracking = set_tracking
        self._on_tier = on_tier

    def apply_stored(self) -> None:
        """Re-apply the last accepted configuration at start; one that no longer applies is logged."""
        if self.gate.current is None:
            return
        try:
            self.apply_body(self.gate.current)
        except (EdgeError, ProtocolError) as exc:  # verified once, but the local files changed since
            log_event(log, logging.WARNING, "stored_config_not_applied", version=self.gate.version, error=str(exc))

    def handle(self, topic: str, payload: bytes) -> None:
        """Check a configuration message; apply and commit it, or refuse it (counted, logged)."""
        try:
            config = self.gate.check(topic, payload)
        except DownlinkRejectedError as exc:
            log_event(log, logging.WARNING, "config_rejected", reason=exc.reason, detail=str(exc))
            return
        if config is None:
            return
        try:
            ignored = self.apply_body(config)
        except (EdgeError, ProtocolError) as exc:  # the rules or the place schema refuse the body
            rejected = self.gate.refuse("invalid_body", f"configuration version {config.version} not applied: {exc}")
            log_event(log, logging.WARNING, "config_rejected", reason=rejected.reason, detail=str(rejected))
            return
        if ignored:
            counters = self.gate.counters
            counters["config_unknown_sections"] = counters.get("config_unknown_sections", 0) + len(ignored)
            log_event(log, logging.INFO, "config_sections_ignored", version=config.version, sections=ignored)
        self.gate.commit(config, payload)
        log_event(log, logging.INFO, "config_applied", version=config.version, sections=sorted(config.body))

    def apply_body(self, config: DeviceConfig) -> list[str]:
        """Validate every known section of a body first, then apply them together.

        Returns:
            The sections this agent does not know, sorted (ignored, not an error).

        Raises:
            DownlinkRejectedError: ``rules`` is not a map, or ``tracking`` is malformed.
            ConfigError: the merged ``rules`` or ``reporting`` are not acceptable.
            PlacesError: a place, market or region item is not acceptable.
            InvalidValue: the ``keys`` section is malformed.
            TierSectionError: the ``tier`` section is not acceptable.
        """
        body = config.body
        announced_key(body)  # a malformed announcement refuses the whole body
        tracking = load_tracking(body["tracking"]) if "tracking" in body else Tracking()
        tier = load_tier_section(body["tier"]) if "tier" in body else None
        markets: list[Place] | None = None
        if "places" in body:
            markets = load_places(body["places"], label="places")
        elif "markets" in body:
            markets = load_places(body["markets"])
        regions = load_regions(body["regions"]) if "regions" in body else None
        rules = None
        if "rules" in body:
            overrides = body["rules"]
            if not isinstance(overrides, Mapping):
                raise DownlinkRejectedError("invalid_body", "configuration body 'rules' must be a map")
            rules = self._local_rules().merged(overrides, self._base_dir)
        reporting = None
        if self._local_reporting is not None:
            reporting = reporting_with_overrides(self._local_reporting(), body.get("reporting", {}))
        if rules is not None:
            self._engine.set_config(rules)
        if markets is not None:
            self._engine.set_markets(markets)
        if regions is not None:
            self._engine.set_regions(regions)
        if reporting is not None and self._set_reporting is not None:
            self._set_reporting(reporting)
        if self._set_tracking is not None:
            self._set_tracking(tracking)
        if self._on_tier is not None:
            self._on_tier(tier)
        return sorted(set(body) - BODY_SECTIONS)
