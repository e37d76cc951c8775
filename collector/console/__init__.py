"""The risk team's web console, served by the collector at ``/console`` (docs/console.md).

``collector.console.web.router`` is the FastAPI router (server-rendered Jinja2 pages, our own
small JS/CSS in ``static/``); :func:`collector.console.web.install` mounts it, its static files
and the session resolver on an app.
"""
