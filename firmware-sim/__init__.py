"""Vehicle + receiver simulator: NMEA and an SLCAN adapter on pseudo-terminals.

An independent peer of the agent: it shares no parsing code with ``edge``. The vehicle's
DBC (``edge/data/generic_car.dbc``) is read as a data file, the car's spec.

Sans-I/O pieces (no clock, no files): :class:`SlcanAdapter` / :func:`encode_frame`,
the NMEA encoders, :class:`GnssReceiver`, :func:`parse_scenario`, :class:`Pace`,
:class:`Simulation`. Thin I/O shells: :class:`PtyLink`, :func:`run_scenario`,
:func:`run_load` and the ``lienwatch sim`` command (``firmware_sim._cli``).

Importing this package stays cheap (no cantools until a DBC is loaded): the pytest
plugin ``tests.services`` imports ``firmware_sim.services`` in every test session.
"""

from ._errors import LinkError, ScenarioError, SimError
from ._gnss import GnssReceiver, SkyConditions, Truth
from ._load import LoadPattern, LoadReport, run_load
from ._nmea import CONSTELLATIONS, Epoch, Satellite, encode_epoch, nmea_checksum, sentence
from ._pace import Pace, PacePiece
from ._pty import PtyLink
from ._record import RecordError, RecordPlan, RecordReport, candump_line, record_scenario, record_to_files
from ._route import Route, distance_m
from ._runner import RunReport, run_scenario
from ._scenario import (
    Scenario,
    Segment,
    TimelineEvent,
    list_scenarios,
    load_scenario,
    parse_duration_ms,
    parse_scenario,
    resolve_scenario,
)
from ._simulation import Simulation, Step
from ._slcan import CanFrame, SlcanAdapter, SlcanReply, encode_frame
from ._vehicle import DEFAULT_DBC, CanCatalog, VehicleModel

__all__ = [
    "CONSTELLATIONS",
    "DEFAULT_DBC",
    "CanCatalog",
    "CanFrame",
    "Epoch",
    "GnssReceiver",
    "LinkError",
    "LoadPattern",
    "LoadReport",
    "Pace",
    "PacePiece",
    "PtyLink",
    "RecordError",
    "RecordPlan",
    "RecordReport",
    "Route",
    "RunReport",
    "Satellite",
    "Scenario",
    "ScenarioError",
    "Segment",
    "SimError",
    "Simulation",
    "SkyConditions",
    "SlcanAdapter",
    "SlcanReply",
    "Step",
    "TimelineEvent",
    "Truth",
    "VehicleModel",
    "candump_line",
    "distance_m",
    "encode_epoch",
    "encode_frame",
    "list_scenarios",
    "load_scenario",
    "nmea_checksum",
    "parse_duration_ms",
    "parse_scenario",
    "record_scenario",
    "record_to_files",
    "resolve_scenario",
    "run_load",
    "run_scenario",
    "sentence",
]
