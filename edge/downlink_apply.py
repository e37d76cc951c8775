"""Applying the signed configurations the collector pushes (markets, regions, rules, tier) to the agent.

The :class:`~edge.uplink.ConfigGate` decides whether a message is acceptable (signature,
device, version floor); this module decides whether its body applies: every known section
is validated first (the place schema of :mod:`protocol.places`, ``[rules]`` overrides merged
over the local file, the ``tier`` section of :mod:`protocol.tier_section`), then all are
applied together, so a body is taken whole or not at all.

A section this agent does not know (one a newer collector added, docs/protocol.md section 6)
is ignored, logged and counted (``config_sections_ignored`` on the gate's counters, in the
state message); the known sections still apply, so old agents keep working. A known section
that is absent means the agent's local default: no ``tier`` section puts the local
``[batch] max_age_s`` back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from protocol import DeviceConfig
from protocol.errors import ProtocolError
from protocol.places import load_places, load_regions
from protocol.tier_section import TierSection, load_tier_section

from .errors import EdgeError
from .rules import RulesConfig
from .seams import RulesEngine
from .structured_log import log_event
from .uplink import ConfigGate, DownlinkRejectedError

__all__ = ["BODY_SECTIONS", "DownlinkApplier"]

log = logging.getLogger("lienwatch.agent")
#: The sections this agent applies (any other is ignored and counted).
BODY_SECTIONS = frozenset({"markets", "regions", "rules", "tier"})


class DownlinkApplier:
    """Check and apply configuration messages on the engine thread.

    Args:
        gate: the downlink acceptance gate (signature, version floor, persisted state).
        engine: the rules engine the body applies to.
        local_rules: the current local ``[rules]`` (overrides are merged over it).
        base_dir: relative file names in ``rules`` overrides resolve against it.
        on_tier: applies a ``tier`` section (None: the body has none, back to the local default).
    """

    def __init__(
        self,
        gate: ConfigGate,
        engine: RulesEngine,
        local_rules: Callable[[], RulesConfig],
        base_dir: Path,
        on_tier: Callable[[TierSection | None], None] | None = None,
    ) -> None:
        self.gate = gate
        self._engine = engine
        self._local_rules = local_rules
        self._base_dir = base_dir
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
            self.apply_body(config)
        except (EdgeError, ProtocolError) as exc:  # the rules or the place schema refuse the body
            rejected = self.gate.refuse("invalid_body", f"configuration version {config.version} not applied: {exc}")
            log_event(log, logging.WARNING, "config_rejected", reason=rejected.reason, detail=str(rejected))
            return
        self.gate.commit(config, payload)
        log_event(log, logging.INFO, "config_applied", version=config.version, sections=sorted(config.body))

    def apply_body(self, config: DeviceConfig) -> None:
        """Validate every known section of a body first, then apply them together.

        Raises:
            DownlinkRejectedError: ``rules`` is not a map.
            ConfigError: the merged ``rules`` are not acceptable.
            PlacesError: a market or region item is not acceptable.
            TierSectionError: the ``tier`` section is not acceptable.
        """
        body = config.body
        unknown = sorted(set(body) - BODY_SECTIONS)
        if unknown:  # a newer collector's section: ignored, the rest still applies
            counters = self.gate.counters
            counters["config_sections_ignored"] = counters.get("config_sections_ignored", 0) + len(unknown)
            log_event(log, logging.WARNING, "config_sections_ignored", version=config.version,
                      sections=",".join(s[:40] for s in unknown[:10]))
        tier = load_tier_section(body["tier"]) if "tier" in body else None
        markets = load_places(body["markets"]) if "markets" in body else None
        regions = load_regions(body["regions"]) if "regions" in body else None
        rules = None
        if "rules" in body:
            overrides = body["rules"]
            if not isinstance(overrides, Mapping):
                raise DownlinkRejectedError("invalid_body", "configuration body 'rules' must be a map")
            rules = self._local_rules().merged(overrides, self._base_dir)
        if rules is not None:
            self._engine.set_config(rules)
        if markets is not None:
            self._engine.set_markets(markets)
        if regions is not None:
            self._engine.set_regions(regions)
        if self._on_tier is not None:
            self._on_tier(tier)
