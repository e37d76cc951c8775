"""Vehicle + receiver simulator: NMEA and an SLCAN adapter on pseudo-terminals.

An independent peer of the agent: it shares no code with ``edge`` and never imports it. The
vehicle's DBC (``edge/data/generic_car.dbc``) is read as a data file, the car's spec.

Public modules, each re-exported here (sans-I/O ones first, no clock, no files):

* :mod:`.scenario` scenario files -> :class:`Scenario` (timeline, segments, route)
* :mod:`.route` :class:`Route` along waypoints, :func:`distance_m`
* :mod:`.pace` :class:`Pace`: scenario time <-> wall time (time acceleration)
* :mod:`.nmea` NMEA sentence encoders; :mod:`.gnss` :class:`GnssReceiver` (sky, fixes, jamming)
* :mod:`.vehicle` :class:`VehicleModel` and the DBC-driven :class:`CanCatalog`
* :mod:`.slcan` :class:`SlcanAdapter`, the Lawicel adapter's command/frame protocol
* :mod:`.traction_battery` :class:`TractionBattery`: an EV pack (charge, degrade, disconnect)
* :mod:`.simulation` :class:`Simulation`: the scenario stepped into NMEA lines and CAN frames
* :mod:`.record` a scenario rendered offline into NMEA and candump logs
* :mod:`.errors` the error tree (:class:`SimError`)

Thin I/O shells: :mod:`.pty` (:class:`PtyLink`), :mod:`.runner` (:func:`run_scenario`),
:mod:`.load` (:func:`run_load`), :mod:`.fleet` (:func:`run_fleet`: signed batches of a
fleet over MQTT) and :mod:`.cli` (``lienwatch sim`` / ``lienwatch demo``).
Whole-chain orchestration (chain rig, private Mosquitto/PostgreSQL, the demo) lives in the
subpackage :mod:`firmware_sim.rig`, which the simulator never imports.

Importing this package stays cheap (no cantools until a DBC is loaded): the tests' fixtures
import ``firmware_sim.rig.services`` in every test session.
"""

from .errors import LinkError, ScenarioError, SimError
from .fleet import FleetError, FleetGenerator, FleetKeys, FleetReport, run_fleet
from .gnss import GnssReceiver, SkyConditions, Truth
from .load import LoadPattern, LoadReport, run_load
from .nmea import CONSTELLATIONS, Epoch, Satellite, encode_epoch, nmea_checksum, sentence
from .pace import Pace, PacePiece
from .pty import PtyLink
from .record import RecordError, RecordPlan, RecordReport, candump_line, record_scenario, record_to_files
from .route import Route, distance_m
from .runner import RunReport, run_scenario
from .scenario import (
    Scenario,
    Segment,
    TimelineEvent,
    list_scenarios,
    load_scenario,
    parse_duration_ms,
    parse_scenario,
    resolve_scenario,
)
from .simulation import Simulation, Step
from .slcan import CanFrame, SlcanAdapter, SlcanReply, encode_frame
from .traction_battery import EV_MESSAGE, TractionBattery
from .vehicle import DEFAULT_DBC, CanCatalog, VehicleModel

__all__ = [
    "CONSTELLATIONS",
    "DEFAULT_DBC",
    "EV_MESSAGE",
    "CanCatalog",
    "CanFrame",
    "Epoch",
    "FleetError",
    "FleetGenerator",
    "FleetKeys",
    "FleetReport",
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
    "TractionBattery",
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
    "run_fleet",
    "run_load",
    "run_scenario",
    "sentence",
]
