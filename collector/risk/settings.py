"""``[risk]``: the authoritative engine, the risk table's thresholds, grace days and the reassessment interval.

A section of the one :class:`collector.settings.Settings` (which loads and validates it with
the rest); defined here so the risk package depends on nothing above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError, check_range
from .decision import MODELS
from .engine import RiskConfig
from .repayments import DEFAULT_GRACE_DAYS

__all__ = ["RiskSettings"]


@dataclass(frozen=True, slots=True)
class RiskSettings:
    """``[risk]``: the risk table's thresholds and how often every loan is reassessed.

    Attributes:
        model: the engine whose answer is the loan's stored level, next step, reasons, risk
            events and webhooks: ``v2`` (the explained score, default) or ``v1`` (the rule
            table, the fallback; both are computed and stored either way, docs/risk.md).
        config: thresholds of the risk table (every other key of ``[risk]``, see
            :meth:`collector.risk.engine.RiskConfig.from_dict` and docs/risk.md).
        grace_days: days after a due date before an unpaid instalment counts as late.
        reassess_interval_s: how often the collector reassesses every loan (days past due
            grow and devices go quiet with time alone, without any new message).
    """

    config: RiskConfig = field(default_factory=RiskConfig)
    model: str = "v2"
    grace_days: int = DEFAULT_GRACE_DAYS
    reassess_interval_s: float = 60.0

    def __post_init__(self) -> None:
        check_range("risk.grace_days", self.grace_days, 0, 60)
        check_range("risk.reassess_interval_s", self.reassess_interval_s, 0.01, 86_400)
        if self.model not in MODELS:
            raise ConfigError(f"risk.model={self.model!r:.40} is not one of {', '.join(MODELS)}")
