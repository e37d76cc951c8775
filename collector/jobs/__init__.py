"""Background jobs of a collector process, each on the one shared worker loop.

* :mod:`collector.jobs.worker_loop` - the start/stop/wake thread every job runs on.
* :mod:`collector.jobs.webhooks` - signed webhooks delivered from the outbox.
* :mod:`collector.jobs.retention` - how long locations and loan records are kept.
* :mod:`collector.jobs.downlink` - signed market lists for the devices and their publisher.
* :mod:`collector.jobs.receipts` - the seq ledger and the signed receipts published to the devices.
* :mod:`collector.jobs.publishing_worker` - the thread and MQTT client the two publishers share.
* :mod:`collector.jobs.periodic` - a job run every interval (retention).
"""
