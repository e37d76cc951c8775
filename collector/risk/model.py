"""The v2 risk model: two L2-regularised logistic regressions and their versioned file.

How this works
--------------
Each axis (``credit``: default; ``collateral``: theft, flight, second lien) has its own
logistic regression over the same :data:`~collector.risk.features.FEATURE_NAMES`:
``P(bad outcome of that kind within 90 days) = 1 / (1 + exp(-(b + w . x)))``.

Fitting minimises the mean log-loss plus ``l2 / (2 n) * |w|^2`` (the intercept is not
penalised) by Newton's method (iteratively reweighted least squares) in numpy: a convex
problem, so the answer does not depend on a starting point or a random seed, only on the
data. The seed lives in the labelled book (:mod:`collector.risk.synthetic_book`).

The model file (``collector/risk/models/risk-v2-<version>.json``, package data) holds the
version, the feature names in order, per axis the intercept, the weights by name and the
level thresholds on the axis probability, the loss-given-default parameters, and how it
was made (command, seed, sizes, bad rates). It is written with sorted keys and rounded
numbers so the same command writes the same bytes.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .engine import RiskConfigError
from .features import FEATURE_NAMES

__all__ = [
    "AXES",
    "DEFAULT_MODEL_VERSION",
    "AxisModel",
    "LossModel",
    "RiskModel",
    "default_model",
    "fit_logistic",
    "fit_logistic_signed",
    "load_model",
    "model_from_dict",
]

AXES = ("credit", "collateral")
DEFAULT_MODEL_VERSION = "2026.12.1"
Array = npt.NDArray[np.float64]


def _sigmoid(z: Array) -> Array:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def fit_logistic(
    x: Array, y: Array, *, l2: float = 1.0, max_iter: int = 100, tol: float = 1e-10
) -> tuple[float, Array]:
    """Fit ``P(y=1|x) = sigmoid(b + w.x)`` with an L2 penalty on ``w`` by Newton's method.

    Args:
        x: ``(n, k)`` features.
        y: ``(n,)`` labels in {0, 1}.
        l2: penalty strength (on the sum of log-losses; the intercept is not penalised).
        max_iter: Newton steps at most.
        tol: stop when the largest step is below this.

    Returns:
        The intercept and the ``(k,)`` weights.
    """
    n, k = x.shape
    if y.shape != (n,) or n == 0:
        raise RiskConfigError(f"fit needs as many labels as rows (got {y.shape} for {x.shape})")
    design = np.hstack([np.ones((n, 1)), x])
    penalty = np.full(k + 1, l2)
    penalty[0] = 0.0
    prior = min(max(float(y.mean()), 1e-6), 1 - 1e-6)
    beta = np.zeros(k + 1)
    beta[0] = math.log(prior / (1 - prior))

    def objective(b: Array) -> float:
        z = design @ b
        # log(1 + e^z) - y z, written to stay finite for large |z|
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * b * b))

    current = objective(beta)
    for _ in range(max_iter):
        p = _sigmoid(design @ beta)
        gradient = design.T @ (p - y) + penalty * beta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(k + 1)
        step = np.linalg.solve(hessian, gradient)
        # Damped Newton: halve the step until the penalised loss does not rise.
        scale = 1.0
        while scale > 1e-6:
            candidate = beta - scale * step
            value = objective(candidate)
            if value <= current:
                break
            scale /= 2
        else:
            break
        beta, current = candidate, value
        if float(np.max(np.abs(scale * step))) < tol:
            break
    return float(beta[0]), beta[1:].copy()


def fit_logistic_signed(
    x: Array, y: Array, *, nonnegative: Sequence[int] = (), l2: float = 1.0
) -> tuple[float, Array]:
    """:func:`fit_logistic` with the weights at ``nonnegative`` constrained to be >= 0.

    Active-set by exclusion: fit, and while a constrained weight is negative, pin the most
    negative one to 0 (drop its column) and fit again. Deterministic; at most one refit per
    constrained feature. Used so that evidence that can only mean more risk (a late, a
    bucket, an open alert on the collateral axis) never shows as lowering it.
    """
    free = list(range(x.shape[1]))
    constrained = set(nonnegative)
    while True:
        intercept, fitted = fit_logistic(x[:, free], y, l2=l2)
        negative = [(w, i) for w, i in zip(fitted.tolist(), free, strict=True) if i in constrained and w < 0]
        if not negative:
            weights = np.zeros(x.shape[1])
            weights[free] = fitted
            return intercept, weights
        free.remove(min(negative)[1])


@dataclass(frozen=True, slots=True)
class AxisModel:
    """One axis's logistic regression and its level thresholds.

    Attributes:
        intercept: log-odds of a loan with no evidence.
        weights: one weight per feature, in :data:`FEATURE_NAMES` order.
        thresholds: axis probability from which the level is ``watch``, ``high``, ``critical``.
    """

    intercept: float
    weights: Array
    thresholds: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.weights.shape != (len(FEATURE_NAMES),):
            raise RiskConfigError(f"axis model needs {len(FEATURE_NAMES)} weights, got {self.weights.shape}")
        if not 0 < self.thresholds[0] < self.thresholds[1] < self.thresholds[2] < 1:
            raise RiskConfigError(f"thresholds {self.thresholds} must increase strictly inside (0, 1)")

    def probability(self, x: Array) -> Array:
        """Axis probability for each row of ``x``."""
        return _sigmoid(self.intercept + x @ self.weights)


@dataclass(frozen=True, slots=True)
class LossModel:
    """Loss given default, as a share of the outstanding principal.

    Attributes:
        recovery_rate: share of the vehicle's current value recovered after a credit default
            (repossession and auction, net of costs).
        min_credit_lgd: floor of the credit loss (collection costs, time).
        collateral_lgd: loss when the vehicle is gone (theft, flight, second lien).
    """

    recovery_rate: float = 0.6
    min_credit_lgd: float = 0.1
    collateral_lgd: float = 0.8

    def credit_lgd(self, ltv: Array) -> Array:
        """``clip(1 - recovery_rate / ltv, min_credit_lgd, 1)`` per loan."""
        safe = np.maximum(ltv, 1e-6)
        return np.asarray(np.clip(1.0 - self.recovery_rate / safe, self.min_credit_lgd, 1.0), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class RiskModel:
    """A versioned v2 model: both axes, the loss model, and how it was made."""

    version: str
    credit: AxisModel
    collateral: AxisModel
    loss: LossModel = field(default_factory=LossModel)
    training: Mapping[str, Any] = field(default_factory=dict)

    def axis(self, name: str) -> AxisModel:
        """``credit`` or ``collateral``."""
        if name == "credit":
            return self.credit
        if name == "collateral":
            return self.collateral
        raise RiskConfigError(f"axis {name!r:.40} is not one of {AXES}")

    def as_dict(self) -> dict[str, Any]:
        """The model file's content."""
        return {
            "format": "lienwatch-risk-model/1",
            "version": self.version,
            "features": list(FEATURE_NAMES),
            "axes": {
                name: {
                    "intercept": round(self.axis(name).intercept, 8),
                    "weights": {
                        f: round(float(w), 8) for f, w in zip(FEATURE_NAMES, self.axis(name).weights, strict=True)
                    },
                    "thresholds": dict(zip(("watch", "high", "critical"), self.axis(name).thresholds, strict=True)),
                }
                for name in AXES
            },
            "loss": {
                "recovery_rate": self.loss.recovery_rate,
                "min_credit_lgd": self.loss.min_credit_lgd,
                "collateral_lgd": self.loss.collateral_lgd,
            },
            "training": dict(self.training),
        }

    def to_json(self) -> str:
        """Stable JSON text (sorted keys, two-space indent, final newline)."""
        return json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n"


def model_from_dict(data: Mapping[str, Any]) -> RiskModel:
    """Parse a model file's content.

    Raises:
        RiskConfigError: wrong format, features that differ from this code's, missing keys.
    """
    try:
        if data["format"] != "lienwatch-risk-model/1":
            raise RiskConfigError(f"model format {data['format']!r:.60} is not lienwatch-risk-model/1")
        if list(data["features"]) != list(FEATURE_NAMES):
            raise RiskConfigError("model features differ from this code's FEATURE_NAMES; refit the model")
        axes = {}
        for name in AXES:
            section = data["axes"][name]
            weights = np.array([float(section["weights"][f]) for f in FEATURE_NAMES])
            t = section["thresholds"]
            axes[name] = AxisModel(
                float(section["intercept"]), weights, (float(t["watch"]), float(t["high"]), float(t["critical"]))
            )
        loss = LossModel(**{k: float(v) for k, v in data["loss"].items()})
        return RiskModel(str(data["version"]), axes["credit"], axes["collateral"], loss, dict(data.get("training", {})))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, RiskConfigError):
            raise
        raise RiskConfigError(f"model file is malformed: {exc!r:.200}") from exc


def load_model(path: str | Path) -> RiskModel:
    """Load a model file."""
    try:
        return model_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise RiskConfigError(f"cannot read model file {path}: {exc}") from exc


@functools.cache
def default_model() -> RiskModel:
    """The packaged model ``collector/risk/models/risk-v2-<DEFAULT_MODEL_VERSION>.json``."""
    text = resources.files("collector.risk.models").joinpath(f"risk-v2-{DEFAULT_MODEL_VERSION}.json").read_text("utf-8")
    return model_from_dict(json.loads(text))
