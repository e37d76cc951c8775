"""The HTTP API (FastAPI): the app, its routers, authentication and dependencies.

* :mod:`collector.api.app` - ``create_app``: health, metrics, devices, dead letters.
* :mod:`collector.api.loans` - loans, repayments, risk, tracks, alerts, markets, audit, SSE.
* :mod:`collector.api.auth` - bearer API keys, roles, :class:`~collector.api.auth.Principal`.
* :mod:`collector.api.dependencies` - settings, database, clock, downlink as dependencies.
"""
