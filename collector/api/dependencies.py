"""What routes get injected: the settings, the database, the clock and the downlink wiring.

Every route takes these through ``Depends(...)``; :func:`collector.api.app.create_app`
overrides each dependency with what it was given (``app.dependency_overrides``), and tests
override them the same way. No route reads ``app.state`` and nothing falls back to defaults:
a dependency that was not provided fails loudly with :class:`ApiNotWiredError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..clock import ClockMs
from ..errors import CollectorError
from ..jobs.downlink import ConfigMessage
from ..settings import Settings, get_settings

__all__ = [
    "ApiNotWiredError",
    "ClockDep",
    "Downlink",
    "DownlinkDep",
    "EngineDep",
    "SessionDep",
    "SettingsDep",
    "get_clock",
    "get_downlink",
    "get_engine",
    "get_session",
    "get_settings",
]


class ApiNotWiredError(CollectorError):
    """A route needed a dependency the app was not built with (use ``create_app``)."""


@dataclass(frozen=True, slots=True)
class Downlink:
    """How a request that changes what devices must hold reaches them.

    Attributes:
        signing_key: the collector's Ed25519 key (``[downlink] signing_key``); ``None``: no
            configuration is signed.
        publish: called with the configurations a request signed, after its commit (``serve``
            passes :meth:`collector.jobs.downlink.ConfigPublisher.submit`); ``None``: the
            running publisher finds them in the outbox on its next round.
    """

    signing_key: Ed25519PrivateKey | None = None
    publish: Callable[[Sequence[ConfigMessage]], None] | None = None


def get_engine() -> Engine:
    """The app's database engine (provided by ``create_app``)."""
    raise ApiNotWiredError("no database engine: build the app with collector.api.app.create_app")


def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    """An ORM session on the app's engine, closed after the request."""
    with Session(engine) as session:
        yield session


def get_clock() -> ClockMs:
    """The collector clock (provided by ``create_app``; tests give a fixed one)."""
    raise ApiNotWiredError("no clock: build the app with collector.api.app.create_app")


def get_downlink() -> Downlink:
    """The downlink signing key and publisher (provided by ``create_app``)."""
    raise ApiNotWiredError("no downlink wiring: build the app with collector.api.app.create_app")


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
ClockDep = Annotated[ClockMs, Depends(get_clock)]
DownlinkDep = Annotated[Downlink, Depends(get_downlink)]
