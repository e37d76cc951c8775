"""Ingest: verified, idempotent storage of what the devices send over MQTT.

* :mod:`collector.ingest.ingestor` - the core: open (verify + decode), store, dead-letter.
* :mod:`collector.ingest.service` - the MQTT 5 adapter (shared subscription, ack after commit).
* :mod:`collector.ingest.registry` - device keys and the ingest's key cache.
* :mod:`collector.ingest.metrics` - the ingest's Prometheus metrics.
* :mod:`collector.ingest.settings` - ``[mqtt]`` and ``[limits]``.

Builds on :mod:`collector.storage` only.
"""
