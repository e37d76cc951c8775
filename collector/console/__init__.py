"""The risk team's web console, served by the collector at ``/console`` (docs/console.md).

``collector.console.web.router`` is the FastAPI router (server-rendered Jinja2 pages, our own
small JS/CSS in ``static/``, served by the router itself); ``serve`` mounts it like the other
optional routers (``collector.api.app.OPTIONAL_ROUTER_MODULES``). Sessions are resolved by
:func:`collector.api.auth.session_principal`.
"""
