"""The chain rig: the whole LienWatch chain in separate processes, for the demo and the HIL suite.

Orchestration, kept apart from the simulator (:mod:`firmware_sim`), which it starts as one
process among others (``lienwatch sim run ...``) and never imports:

* :mod:`firmware_sim.rig.chain`: :class:`ChainRig` starts simulator -> agent -> private
  Mosquitto -> collector on loopback, each in its own process with a log file;
  :class:`LinkCutter` cuts and restores a TCP link between two of them.
* :mod:`firmware_sim.rig.services`: private Mosquitto and PostgreSQL instances on free
  loopback ports (also used by the tests' fixtures and the benchmarks).
* :mod:`firmware_sim.rig.tls`: a throwaway CA, the broker's server certificate and client
  certificates (the HIL suite's broker runs TLS).
* :mod:`firmware_sim.rig.demo`: ``lienwatch demo``, the chain played and narrated.
* :mod:`firmware_sim.rig.errors`: :class:`RigError` and its :class:`ServiceError`.
"""

from .chain import API_KEYS, ChainRig, LinkCutter, ManagedProcess
from .errors import RigError, ServiceError
from .services import BrokerAuth, BrokerTls, Mosquitto, Postgres, find_binary, free_port, wait_for_port

__all__ = [
    "API_KEYS",
    "BrokerAuth",
    "BrokerTls",
    "ChainRig",
    "LinkCutter",
    "ManagedProcess",
    "Mosquitto",
    "Postgres",
    "RigError",
    "ServiceError",
    "find_binary",
    "free_port",
    "wait_for_port",
]
