"""The console's pages: sign-in, worklist, loan, alert feed, audit log, devices, exports.

How this works
--------------
Server-rendered Jinja2 pages (``templates/``) with our own small script and style sheet
(``static/``); no third-party JS or CSS, nothing loaded from another origin (the Content
Security Policy says ``'self'`` only, so no inline script either).

Who: :func:`collector.api.auth.session_principal` turns the ``lw_session`` cookie into a
:class:`collector.api.auth.Principal` (``collector.storage.people``). The same resolver lets
the API's ``require_role`` accept the session (so the worklist's
``EventSource`` on ``/v1/risk/stream`` works with the cookie), with the CSRF token required
on every write there too. Console writes (sign-out, language, reassess) are HTML forms that
carry the token in a hidden field; a write without it is refused with 403.

What each role sees: ``admin`` everything; ``risk_analyst`` worklist, loans, alerts with
evidence, exports; ``collections`` worklist, loans and alerts **without** coordinates or place
names (evidence keys that reveal a location are left out of the page); ``auditor`` the audit
log. The loan page's track map and its GeoJSON/GPX exports follow the API's rule through the
same function (:func:`collector.api.loans.authorize_location`, over
:func:`collector.loans.access.authorize_location_read`): analysts and admins give a reason
first (a form; until then the page holds no coordinates), collections need an approved grant
or an emergency access of their own (else the page offers the request form). The alert feed
and its CSV show evidence coordinates only to analysts and admins who gave a reason
(:func:`collector.loans.access.authorize_book_location_read`); its live stream carries the reason
only once given, so the browser receives no coordinates before (:func:`_stream_url`). Every page that shows personal
or location data writes an audit row like the API (``view_worklist``, ``view_loan``,
``view_track``, ``view_alerts``, ``export_*``; location reads, ``view_track`` and the feed's
``view_alert_locations`` per loan, with ``access_basis``, ``grant_id``, ``access_reason``),
committed before the page is sent.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from protocol.geo import gcj02_to_wgs84
from protocol.places import PlaceType

from ..api.auth import Principal, authenticate, console_session, csrf_matches
from ..api.dependencies import ClockDep, EngineDep, SettingsDep
from ..api.loans import authorize_location
from ..clock import ClockMs, utc_date
from ..jobs.redaction import located_subjects, reasons_for_collections, redact_coordinates
from ..loans.access import (
    GRANTEE_ROLES,
    AccessDeniedError,
    AccessError,
    LocationAccess,
    authorize_book_location_read,
    authorize_location_read,
    list_access_requests,
    request_access,
    request_emergency_access,
    theft_signatures,
)
from ..loans.queries import (
    LEVELS,
    NEXT_STEPS,
    REASON_CODES,
    SEVERITIES,
    SORTS,
    TIERS,
    AlertFilter,
    QueryError,
    WorklistFilter,
    alert_export_rows,
    alert_feed,
    alert_rules,
    device_rows,
    loan_regions,
    worklist,
    worklist_export_rows,
)
from ..loans.store import vehicle_condition
from ..risk.assessment import LoanNotFoundError, loan_facts, reassess_loan_as_configured
from ..risk.repayments import format_cents
from ..settings import ConsoleSettings, Settings
from ..storage.audit import query_audit_log, record_access
from ..storage.people import (
    LOCALES,
    SESSION_COOKIE,
    PeopleError,
    authenticate_user,
    end_session,
    open_session,
    purge_sessions,
    update_session_locale,
)
from ..storage.places import place_circles_wgs84, place_items
from ..storage.tables import (
    AlertRecord,
    CaseRecord,
    FixRecord,
    LoanDeviceRecord,
    LoanRecord,
    RepaymentRecord,
    RiskEventRecord,
    RiskStateRecord,
    SampleRecord,
)
from ..storage.tables import DeviceStatus as DeviceStatusRecord
from ..timefmt import TimeFormatError, format_time, iso_utc, local_input_value, parse_time
from ..timefmt import zone as zone_info
from . import catalog
from .charts import bar_chart
from .exports import alerts_csv, track_geojson, track_gpx, worklist_csv
from .track_map import MapAlert, MapMarket, MapPoint, TileLayer, find_stops, render_track_svg

__all__ = ["router"]

HERE = Path(__file__).resolve().parent
#: the files of ``static/`` and their media types
STATIC_FILES = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
DEFAULT_LOAN_ZONE = "Asia/Shanghai"
LOGIN_COOKIE = "lw_login"
MAX_TRACK_MS = 31 * 86_400_000
MAX_TRACK_POINTS = 20_000
MAX_EXPORT_ROWS = 100_000
LOCATION_ROLES = frozenset({"admin", "risk_analyst"})
PAGE_ROLES: dict[str, frozenset[str]] = {
    "worklist": frozenset({"admin", "risk_analyst", "collections"}),
    "alerts": frozenset({"admin", "risk_analyst", "collections"}),
    "loan": frozenset({"admin", "risk_analyst", "collections"}),
    "track": frozenset({"admin", "risk_analyst", "collections"}),  # under collector.loans.access
    "request_access": frozenset(GRANTEE_ROLES),
    "assess": LOCATION_ROLES,
    "audit": frozenset({"admin", "auditor"}),
    "devices": frozenset({"admin"}),
    "cases": frozenset({"admin", "risk_analyst", "collections"}),  # collector.console.case_pages
    "act_on_case": frozenset({"admin", "collections"}),
    "places": LOCATION_ROLES,
    "users": frozenset({"admin"}),  # collector.console.user_pages
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=str(HERE / "templates"))


# ------------------------------------------------------------------ wiring


@dataclass(frozen=True, slots=True)
class _Wiring:
    """What a console request works with (the API's dependencies, kept on ``request.state``)."""

    settings: Settings
    engine: sa.Engine
    clock_ms: ClockMs


def _wire(request: Request, settings: SettingsDep, engine: EngineDep, clock_ms: ClockDep) -> None:
    """Router dependency: keep the injected settings, engine and clock for the page helpers."""
    request.state.console_wiring = _Wiring(settings, engine, clock_ms)


def _wiring(request: Request) -> _Wiring:
    wiring: _Wiring = request.state.console_wiring
    return wiring


def _now_ms(request: Request) -> int:
    return _wiring(request).clock_ms()


def _console_settings(request: Request) -> ConsoleSettings:
    return _wiring(request).settings.console


def _engine(request: Request) -> sa.Engine:
    return _wiring(request).engine


SessionPrincipal = Annotated[Principal | None, Depends(console_session)]
router = APIRouter(prefix="/console", include_in_schema=False, dependencies=[Depends(_wire)])


@router.get("/static/{name}", response_model=None)
def static_file(name: str) -> Response:
    """The console's own script and style sheet (``static/``; nothing else is served)."""
    if name not in STATIC_FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    return FileResponse(HERE / "static" / name, media_type=STATIC_FILES[name])


def _page_principal(principal: SessionPrincipal) -> Principal:
    if principal is None:
        raise HTTPException(status.HTTP_303_SEE_OTHER, "sign in first", headers={"Location": "/console/sign-in"})
    return principal


PagePrincipal = Annotated[Principal, Depends(_page_principal)]


def _allow(principal: Principal, page: str) -> None:
    if principal.role not in PAGE_ROLES[page]:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {principal.role!r} may not open {page}")


def _audit(session: Session, request: Request, principal: Principal, action: str, subject_type: str, *,
           subject_id: str, **detail: Any) -> None:
    record_access(session, actor=principal.key_id, role=principal.role, action=action, subject_type=subject_type,
                  subject_id=subject_id, time_ms=_now_ms(request), detail=detail)


def _home(role: str) -> str:
    return {"auditor": "/console/audit"}.get(role, "/console/worklist")


def _render(request: Request, name: str, principal: Principal | None, context: Mapping[str, Any],
            *, status_code: int = 200) -> HTMLResponse:
    locale = principal.locale if principal is not None else _guess_locale(request)

    def t(key: str) -> str:
        return catalog.text(key, locale)

    nav = []
    if principal is not None:
        for page, href in (("worklist", "/console/worklist"), ("cases", "/console/cases"),
                           ("alerts", "/console/alerts"), ("places", "/console/places"), ("audit", "/console/audit"),
                           ("devices", "/console/devices"), ("users", "/console/users")):
            if principal.role in PAGE_ROLES[page]:
                nav.append((t(page), href))
    base = {
        "t": t,
        "locale": locale,
        "html_lang": "zh-Hans" if locale == "zh-CN" else "en",
        "principal": principal,
        "nav": nav,
        "locales": LOCALES,
        "level_name": lambda level: catalog.level_name(level, locale),
        "step_name": lambda step: catalog.step_name(step, locale),
        "tier_name": lambda tier: catalog.tier_name(tier, locale),
        "contribution": lambda reason: catalog.contribution_text(reason, locale),
    }
    response = templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)
    response.headers.update(_SECURITY_HEADERS)
    tile_url = _console_settings(request).tile_url
    if tile_url is not None:  # the browser fetches the configured tiles itself
        origin = "/".join(tile_url.split("/", 3)[:3])
        response.headers["Content-Security-Policy"] = _SECURITY_HEADERS["Content-Security-Policy"].replace(
            "img-src 'self' data:", f"img-src 'self' data: {origin}")
    return response


def _guess_locale(request: Request) -> str:
    accept = request.headers.get("accept-language", "").lower()
    return "zh-CN" if accept.startswith("zh") else "en"


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def _checked_form(request: Request, principal: Principal) -> dict[str, str]:
    """The posted form, after checking its CSRF token (403 without it)."""
    fields = await _form(request)
    if not csrf_matches(request, principal, fields.get("csrf_token", "")):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    return fields


def _stream_url(after_risk: int, after_alert: int, access: LocationAccess | None = None) -> str:
    """The risk stream with alerts, starting after what the page already shows.

    Without ``access`` the stream sends no coordinates (the browser gets none before a reason
    was given); with it, the page's reason goes along and the stream audits what it sends.
    """
    params: dict[str, str | int] = {"after_id": after_risk, "alerts": "true", "alert_after_id": after_alert}
    if access is not None:
        params["reason"] = access.reason
    return f"/v1/risk/stream?{urlencode(params)}"


def _loan_zone(loan: LoanRecord) -> str:
    zone = getattr(loan, "time_zone", None)
    return zone if isinstance(zone, str) and zone else DEFAULT_LOAN_ZONE


# ------------------------------------------------------------------ sign-in


@router.get("", response_model=None)
@router.get("/", response_model=None)
def console_home(principal: SessionPrincipal) -> Response:
    """To the role's first page, or to the sign-in form."""
    return RedirectResponse(_home(principal.role) if principal else "/console/sign-in", status.HTTP_303_SEE_OTHER)


def _sign_in_page(request: Request, *, error: bool = False, status_code: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = _render(request, "sign_in.html", None, {"login_token": token, "error": error},
                       status_code=status_code)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/console",
                        secure=_console_settings(request).secure_cookie)
    return response


@router.get("/sign-in", response_model=None)
def sign_in_form(request: Request) -> Response:
    """The sign-in form (user name + password, or an API key)."""
    return _sign_in_page(request)


@router.post("/sign-in", response_model=None)
async def sign_in(request: Request) -> Response:
    """Exchange a password or an API key for a session cookie (the key travels in the body only)."""
    fields = await _form(request)
    login_cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not login_cookie or not secrets.compare_digest(login_cookie, fields.get("login_token", "")):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong sign-in token (reload the form)")
    console = _console_settings(request)
    now = _now_ms(request)
    max_age = int(console.session_max_hours * 3_600_000)
    username, password = fields.get("username", "").strip()[:64], fields.get("password", "")[:1025]
    api_key = fields.get("api_key", "").strip()[:513]
    idle_ms = int(console.session_idle_minutes * 60_000)
    with Session(_engine(request)) as session:
        purge_sessions(session, now_ms=now, idle_ms=idle_ms)  # sign-ins sweep the sessions that ended
        token = None
        if username:
            user = authenticate_user(session, username, password)
            if user is not None:
                token, opened = open_session(
                    session, actor=f"user:{user.username}", role=user.role, display_name=user.display_name,
                    now_ms=now, max_age_ms=max_age, username=user.username, locale=user.locale,
                    time_zone=user.time_zone,
                )
        elif api_key:
            key_principal = authenticate(api_key, _wiring(request).settings)
            if key_principal is not None:
                locale = fields.get("locale", "en")
                token, opened = open_session(
                    session, actor=key_principal.key_id, role=key_principal.role,
                    display_name=f"API key {key_principal.key_id}", now_ms=now, max_age_ms=max_age,
                    locale=locale if locale in LOCALES else "en",
                )
        record_access(session, actor=(f"user:{username}" if username else "api-key")[:128], role="none",
                      action="sign_in" if token else "sign_in_failed", subject_type="console",
                      subject_id=username or "api-key", time_ms=now, detail={"by": "password" if username else "key"})
        session.commit()
    if token is None:
        return _sign_in_page(request, error=True, status_code=status.HTTP_401_UNAUTHORIZED)
    response = RedirectResponse(_home(opened.role), status.HTTP_303_SEE_OTHER)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/",
                        secure=console.secure_cookie)
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


@router.post("/sign-out", response_model=None)
async def sign_out(request: Request, principal: PagePrincipal) -> Response:
    """End the session (CSRF token required)."""
    await _checked_form(request, principal)
    with Session(_engine(request)) as session:
        end_session(session, request.cookies.get(SESSION_COOKIE, ""))
        _audit(session, request, principal, "sign_out", "console", subject_id=principal.username or principal.key_id)
        session.commit()
    response = RedirectResponse("/console/sign-in", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/preferences", response_model=None)
async def preferences(request: Request, principal: PagePrincipal) -> Response:
    """Switch the language (kept on the user, CSRF token required)."""
    fields = await _checked_form(request, principal)
    try:
        with Session(_engine(request)) as session:
            update_session_locale(session, request.cookies.get(SESSION_COOKIE, ""), fields.get("locale", ""))
            session.commit()
    except PeopleError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    back = fields.get("back", "")
    target = back if back.startswith("/console/") and "//" not in back else _home(principal.role)
    return RedirectResponse(target, status.HTTP_303_SEE_OTHER)


# ------------------------------------------------------------------ worklist


def _worklist_filter(request: Request) -> WorklistFilter:
    q = request.query_params
    try:
        return WorklistFilter(
            level=q.get("level") or None, next_step=q.get("next_step") or None, reason=q.get("reason") or None,
            search=(q.get("q") or "").strip() or None, tier=q.get("tier") or None,
            region=(q.get("region") or "").strip() or None,
            sort=q.get("sort") or "expected_loss",
        )
    except QueryError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


def _may_see_scores(principal: Principal) -> bool:
    """Risk scores are for admin and risk analysts (docs/people.md); collections see levels."""
    return principal.role in ("admin", "risk_analyst")


def _shown_rows(rows: list[dict[str, Any]], principal: Principal) -> list[dict[str, Any]]:
    if _may_see_scores(principal):
        return rows
    return [r | {"score": None, "expected_loss": None} for r in rows]


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 1_000_000 else 1


@router.get("/worklist", response_model=None)
def worklist_page(request: Request, principal: PagePrincipal) -> Response:
    """Loans by urgency with filters, search and paging; live level changes over SSE."""
    _allow(principal, "worklist")
    filters = _worklist_filter(request)
    page_no = _page_number(request)
    with Session(_engine(request)) as session:
        page = worklist(session, filters, page=page_no)
        regions = loan_regions(session)
        after_risk = session.scalar(sa.select(sa.func.max(RiskEventRecord.id))) or 0
        after_alert = session.scalar(sa.select(sa.func.max(AlertRecord.id))) or 0
        _audit(session, request, principal, "view_worklist", "loan", subject_id="*", page=page_no, rows=len(page.rows),
               **filters.as_params())
        session.commit()
    params = filters.as_params()
    return _render(request, "worklist.html", principal, {
        "rows": _shown_rows(page.rows, principal),
        "show_scores": _may_see_scores(principal),
        "tiers": TIERS,
        "sorts": SORTS,
        "regions": regions,
        "page": page,
        "filters": filters,
        "levels": LEVELS,
        "next_steps": NEXT_STEPS,
        "reason_codes": REASON_CODES,
        "prev_url": f"/console/worklist?{urlencode({**params, 'page': page_no - 1})}" if page_no > 1 else None,
        "next_url": f"/console/worklist?{urlencode({**params, 'page': page_no + 1})}" if page.has_next else None,
        "csv_url": f"/console/worklist.csv?{urlencode(params)}",
        "stream_url": _stream_url(after_risk, after_alert),
        "fmt": lambda ms: format_time(ms, DEFAULT_LOAN_ZONE, seconds=False),
    })


@router.get("/worklist.csv", response_model=None)
def worklist_export(request: Request, principal: PagePrincipal) -> Response:
    """The filtered worklist as CSV (at most 100,000 rows), audited."""
    _allow(principal, "worklist")
    filters = _worklist_filter(request)
    with Session(_engine(request)) as session:
        rows = worklist_export_rows(session, filters, limit=MAX_EXPORT_ROWS)
        _audit(session, request, principal, "export_worklist_csv", "loan", subject_id="*", rows=len(rows),
               **filters.as_params())
        session.commit()
    return Response(worklist_csv(_shown_rows(rows, principal)), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="worklist.csv"', "Cache-Control": "no-store"})


# ------------------------------------------------------------------ alerts


def _alert_filter(request: Request, zone_name: str) -> AlertFilter:
    q = request.query_params
    try:
        since = parse_time(q["from"], default_zone=zone_name) if q.get("from") else None
        until = parse_time(q["to"], default_zone=zone_name) if q.get("to") else None
        return AlertFilter(rule=q.get("rule") or None, severity=q.get("severity") or None, since_ms=since,
                           until_ms=until)
    except (QueryError, TimeFormatError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


def _shown_alert(row: dict[str, Any], principal: Principal, *, located: bool) -> dict[str, Any]:
    """An alert row as ``principal`` may see it: coordinates only with a location read (``located``)."""
    if principal.role not in LOCATION_ROLES:
        return {**row, "evidence": catalog.redact_locations(row["evidence"])}
    return row if located else {**row, "evidence": redact_coordinates(row["evidence"])}


def _feed_location_access(session: Session, request: Request, principal: Principal) -> LocationAccess | None:
    """May the alert feed (page or CSV) show its evidence coordinates, and on what grounds.

    The loan page's rule for the track (:func:`_page_location_access`), across the book:
    ``risk_analyst``/``admin`` only once a ``reason`` came with the request (the form on the
    page). A request with a ``reason`` that is refused (empty, or a role that never sees the
    book's locations: grants are per loan) is an audit row ``location_access_denied``
    committed here, then :class:`AccessError`. Without a ``reason`` the feed is shown without
    coordinates and asks for nothing.
    """
    if "reason" not in request.query_params:
        return None
    try:
        return authorize_book_location_read(role=principal.role, reason=request.query_params.get("reason"))
    except AccessError as exc:
        _audit(session, request, principal, "location_access_denied", "alert", subject_id="*", scope="alerts",
               error=str(exc))
        session.commit()
        raise


def _audit_feed_locations(session: Session, request: Request, principal: Principal, action: str, *,
                          rows: list[dict[str, Any]], access: LocationAccess) -> int:
    """One audit row per loan (or unlinked device) whose alert coordinates were shown, like a track read."""
    shown = located_subjects(rows, "evidence")
    for (subject_type, subject_id), count in shown.items():
        _audit(session, request, principal, action, subject_type, subject_id=subject_id, alerts=count,
               **access.audit_detail())
    return len(shown)


def _feed_params(request: Request, access: LocationAccess | None) -> dict[str, str]:
    """The feed's filters for its links (the reason too once given, like the track's export links)."""
    params = {k: v for k, v in request.query_params.items() if k in ("rule", "severity", "from", "to") and v}
    if access is not None:
        params["reason"] = access.reason
    return params


@router.get("/alerts", response_model=None)
def alerts_page(request: Request, principal: PagePrincipal) -> Response:
    """Every alert across the book, newest first, with filters; new ones arrive live.

    Evidence coordinates only for an analyst or admin who gave a reason (the form on the
    page); each loan whose coordinates were shown gets a ``view_alert_locations`` audit row.
    """
    _allow(principal, "alerts")
    filters = _alert_filter(request, DEFAULT_LOAN_ZONE)
    page_no = _page_number(request)
    show_places = principal.role in LOCATION_ROLES
    with Session(_engine(request)) as session:
        refusal = None
        try:
            access = _feed_location_access(session, request, principal)
        except AccessError as exc:
            access, refusal = None, str(exc)
        page = alert_feed(session, filters, page=page_no)
        rules = alert_rules(session)
        after_risk = session.scalar(sa.select(sa.func.max(RiskEventRecord.id))) or 0
        after_alert = session.scalar(sa.select(sa.func.max(AlertRecord.id))) or 0
        located = access is not None
        loans_located = 0 if access is None else _audit_feed_locations(
            session, request, principal, "view_alert_locations", rows=page.rows, access=access)
        _audit(session, request, principal, "view_alerts", "alert", subject_id="*", page=page_no, rows=len(page.rows),
               rule=filters.rule, severity=filters.severity, located=loans_located,
               **(access.audit_detail() if access is not None else {}))
        session.commit()
    params = _feed_params(request, access)
    rows = []
    for r in page.rows:
        shown = _shown_alert(r, principal, located=located)
        rows.append({**shown, "evidence_items": catalog.evidence_items(shown["evidence"], show_places=show_places)})
    return _render(request, "alerts.html", principal, {
        "rows": rows,
        "page": page,
        "rules": rules,
        "severities": SEVERITIES,
        "query": params,
        "location": {"may_ask": principal.role in LOCATION_ROLES, "access": access, "refusal": refusal},
        "prev_url": f"/console/alerts?{urlencode({**params, 'page': page_no - 1})}" if page_no > 1 else None,
        "next_url": f"/console/alerts?{urlencode({**params, 'page': page_no + 1})}" if page.has_next else None,
        "csv_url": f"/console/alerts.csv?{urlencode(params)}",
        "stream_url": _stream_url(after_risk, after_alert, access),
        "fmt": lambda ms: format_time(ms, DEFAULT_LOAN_ZONE),
    })


@router.get("/alerts.csv", response_model=None)
def alerts_export(request: Request, principal: PagePrincipal) -> Response:
    """The filtered alert feed as CSV, audited: coordinates as on the page (a ``reason`` first).

    Without a ``reason`` the evidence has no coordinates (collections: no places either); a
    refused ``reason`` is 422 (empty) or 403 (a role that never sees them), audited.
    """
    _allow(principal, "alerts")
    filters = _alert_filter(request, DEFAULT_LOAN_ZONE)
    with Session(_engine(request)) as session:
        try:
            access = _feed_location_access(session, request, principal)
        except AccessError as exc:
            code = status.HTTP_403_FORBIDDEN if isinstance(exc, AccessDeniedError) else 422
            raise HTTPException(code, str(exc)) from exc
        found = alert_export_rows(session, filters, limit=MAX_EXPORT_ROWS)
        loans_located = 0 if access is None else _audit_feed_locations(
            session, request, principal, "export_alert_locations_csv", rows=found, access=access)
        rows = [_shown_alert(r, principal, located=access is not None) for r in found]
        _audit(session, request, principal, "export_alerts_csv", "alert", subject_id="*", rows=len(rows),
               located=loans_located, **(access.audit_detail() if access is not None else {}))
        session.commit()
    return Response(alerts_csv(rows), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="alerts.csv"', "Cache-Control": "no-store"})


# ------------------------------------------------------------------ the loan page


def _track_window(request: Request, zone_name: str, now_ms: int) -> tuple[int, int]:
    q = request.query_params
    try:
        until = parse_time(q["to"], default_zone=zone_name) if q.get("to") else now_ms
        since = parse_time(q["from"], default_zone=zone_name) if q.get("from") else until - 86_400_000
    except TimeFormatError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    if not 0 <= until - since <= MAX_TRACK_MS:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the period must run forward, at most 31 days")
    return since, until


def _track_points(session: Session, device_id: str, since: int, until: int) -> tuple[list[MapPoint], bool]:
    rows = session.execute(
        sa.select(FixRecord.time_ms, FixRecord.lat, FixRecord.lon, FixRecord.speed_mps)
        .where(FixRecord.device_id == device_id, FixRecord.time_ms >= since, FixRecord.time_ms <= until)
        .order_by(FixRecord.time_ms, FixRecord.id)
        .limit(MAX_TRACK_POINTS + 1)
    ).all()
    points = [MapPoint(t, lat, lon, speed) for t, lat, lon, speed in rows[:MAX_TRACK_POINTS]]
    return points, len(rows) > MAX_TRACK_POINTS


def market_circles(session: Session) -> list[MapMarket]:
    """Every typed place (markets, pawn lots, ...) as a WGS-84 circle (GCJ-02 / BD-09 converted once)."""
    return [MapMarket(ident, name, lat, lon, radius_m)
            for ident, _type, name, lat, lon, radius_m in place_circles_wgs84(session)]


def _tile_layer(console: ConsoleSettings) -> TileLayer | None:
    """The configured tile server, with the datum conversion its tiles need."""
    if console.tile_url is None:
        return None
    if console.tile_datum == "gcj02":
        return TileLayer(console.tile_url, gcj02_to_wgs84)
    return TileLayer(console.tile_url)


def _alert_positions(rows: list[dict[str, Any]]) -> list[MapAlert]:
    out = []
    for r in rows:
        ev = r["evidence"]
        for lat_key, lon_key in (("centre_lat", "centre_lon"), ("lat", "lon"), ("position_lat", "position_lon")):
            lat, lon = ev.get(lat_key), ev.get(lon_key)
            if isinstance(lat, (int, float)) and isinstance(lon, (int, float)):
                out.append(MapAlert(r["rule"], r["time_ms"], float(lat), float(lon)))
                break
    return out


def _region_circles(rows: list[dict[str, Any]]) -> list[MapMarket]:
    """Allowed regions named by region alerts' evidence (centre + radius), when they carry one."""
    out = []
    for r in rows:
        ev = r["evidence"]
        lat, lon, radius = ev.get("region_lat"), ev.get("region_lon"), ev.get("region_radius_m")
        if all(isinstance(v, (int, float)) for v in (lat, lon, radius)):
            out.append(MapMarket(str(ev.get("region_id", "region")), str(ev.get("region_name", "allowed region")),
                                 float(lat), float(lon), float(radius), kind="region"))
    return out


def _track_view(session: Session, request: Request, principal: Principal, loan: LoanRecord, *, access: LocationAccess,
                alert_rows: list[dict[str, Any]], window: tuple[int, int], zone_name: str) -> dict[str, Any]:
    """The loan page's track card for an authorised read (the read is audited with its access basis)."""
    since, until = window
    loan_id = loan.loan_id
    points, truncated = _track_points(session, loan.device_id, since, until)
    stops = find_stops(points)
    in_window = [a for a in alert_rows if since <= a["time_ms"] <= until]
    stop_labels = [catalog.duration_text(s.duration_s, principal.locale) for s in stops]
    svg = render_track_svg(
        points, markets=[*market_circles(session), *_region_circles(alert_rows)],
        alerts=_alert_positions(in_window), stops=stops, stop_labels=stop_labels, title=f"track {loan_id}",
        tiles=_tile_layer(_console_settings(request)),
    )
    query = {"from": iso_utc(since), "to": iso_utc(until)}
    if access.basis == "role":
        query["reason"] = access.reason
    exports = urlencode(query)
    _audit(session, request, principal, "view_track", "loan", subject_id=loan_id, from_ms=since, to_ms=until,
           points=len(points), **access.audit_detail())
    return {
        "svg": svg,
        "points": len(points),
        "truncated": truncated,
        "stops": [{"start": format_time(s.start_ms, zone_name), "end": format_time(s.end_ms, zone_name),
                   "duration": label} for s, label in zip(stops, stop_labels, strict=True)],
        "geojson_url": f"/console/loans/{loan_id}/track.geojson?{exports}",
        "gpx_url": f"/console/loans/{loan_id}/track.gpx?{exports}",
        "basis": access.basis,
        "grant_id": access.grant_id,
        "reason": access.reason,
    }


def _payment_views(payments: list[RepaymentRecord], zone_name: str) -> dict[str, Any]:
    """The payment list (reversed payments marked) and its total without the reversed ones."""
    rows = [{"payment_id": p.payment_id, "paid_on": p.paid_on.isoformat(), "amount": format_cents(p.amount_cents),
             "reversed": p.reversed_ms is not None, "reversal_id": p.reversal_id,
             "reversed_at": format_time(p.reversed_ms, zone_name) if p.reversed_ms is not None else ""}
            for p in payments]
    return {"payments": rows,
            "payments_total": format_cents(sum(p.amount_cents for p in payments if p.reversed_ms is None))}


@router.get("/loans/{loan_id}", response_model=None)
def loan_page(loan_id: str, request: Request, principal: PagePrincipal) -> Response:
    """A loan's story: level, next step, reasons, schedule, payments, timeline, alerts, device, track."""
    _allow(principal, "loan")
    show_places = principal.role in LOCATION_ROLES
    now = _now_ms(request)
    settings = _wiring(request).settings
    with Session(_engine(request)) as session:
        loan = session.get(LoanRecord, loan_id)
        if loan is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"loan {loan_id!r:.80} does not exist")
        zone_name = _loan_zone(loan)
        facts = loan_facts(session, loan_id, utc_date(now), grace_days=settings.risk.grace_days)
        state = session.get(RiskStateRecord, loan_id)
        payments = list(session.scalars(
            sa.select(RepaymentRecord).where(RepaymentRecord.loan_id == loan_id).order_by(RepaymentRecord.paid_on)
        ))
        events = list(session.scalars(
            sa.select(RiskEventRecord).where(RiskEventRecord.loan_id == loan_id)
            .order_by(RiskEventRecord.time_ms.desc(), RiskEventRecord.id.desc()).limit(100)
        ))
        alert_rows = alert_feed(session, AlertFilter(loan_id=loan_id), size=100).rows
        device = session.get(DeviceStatusRecord, loan.device_id)
        second_tracker = session.scalar(
            sa.select(LoanDeviceRecord.device_id).where(LoanDeviceRecord.loan_id == loan_id)
        )
        since, until = _track_window(request, zone_name, now)
        access, refusal = _page_location_access(session, request, principal, loan_id, now)
        track = None if access is None else _track_view(
            session, request, principal, loan, access=access, alert_rows=alert_rows, window=(since, until),
            zone_name=zone_name)
        location = _location_panel(session, principal, loan_id, now, track=track, refusal=refusal)
        location |= {"from_value": local_input_value(since, zone_name), "to_value": local_input_value(until, zone_name)}
        located = access is not None
        _audit(session, request, principal, "view_loan", "loan", subject_id=loan_id)
        session.commit()
        context = {
            "loan": {
                "loan_id": loan.loan_id, "device_id": loan.device_id, "vin": loan.vin,
                "borrower_ref": loan.borrower_ref, "principal": format_cents(loan.principal_cents),
            },
            "zone": zone_name,
            "open_case": session.scalar(
                sa.select(CaseRecord.id).where(CaseRecord.loan_id == loan_id, CaseRecord.status == "open")
            ),
            "level": state.level if state is not None else "normal",
            "next_step": state.next_step if state is not None else "monitor",
            "evaluated": format_time(state.evaluated_ms if state is not None else None, zone_name),
            "reasons": _reason_views(state, principal, zone_name, show_places=show_places, located=located),
            "score": _score_view(state) if _may_see_scores(principal) else None,
            "facts": facts.as_dict(with_installments=True),
            **_payment_views(payments, zone_name),
            "events": [{"time": format_time(e.time_ms, zone_name), "old": e.old_level, "new": e.new_level,
                        "next_step": e.next_step, "codes": [x.get("code") for x in e.reasons]} for e in events],
            "alerts": [{**_shown_alert(a, principal, located=located), "time": format_time(a["time_ms"], zone_name),
                        "evidence_items": _evidence_items(a["evidence"], show_places=show_places, located=located)}
                       for a in alert_rows],
            "device": {
                "online": device.online if device is not None else None,
                "last_seen": format_time(device.last_seen_ms if device is not None else None, zone_name),
                "last_fix": format_time(device.last_fix_ms if device is not None else None, zone_name),
                "second_tracker": second_tracker,
            },
            "track": track,
            "location": location,
            "may_assess": principal.role in PAGE_ROLES["assess"],
        }
    return _render(request, "loan.html", principal, context)


def _page_location_access(
    session: Session, request: Request, principal: Principal, loan_id: str, now: int
) -> tuple[LocationAccess | None, str | None]:
    """May the loan page show the track now, and on what grounds (collector.loans.access decides).

    ``risk_analyst``/``admin``: only once a ``reason`` came with the request (the form on the
    page), through the API's :func:`collector.api.loans.authorize_location` (a refusal is an
    audit row ``location_access_denied``). ``collections``: under an approved, unexpired grant
    or an emergency access of their own; without one the page offers the request form (a page
    view asks for nothing, so it is no refusal). Returns the access or the refusal's text.
    """
    if principal.role in LOCATION_ROLES:
        if "reason" not in request.query_params:
            return None, None
        try:
            return authorize_location(session, now, principal, loan_id, scope="track",
                                      reason=request.query_params.get("reason")), None
        except HTTPException as exc:
            return None, str(exc.detail)
    if principal.role in GRANTEE_ROLES:
        try:
            return authorize_location_read(session, loan_id=loan_id, actor=principal.key_id, role=principal.role,
                                           scope="track", reason=None, now_ms=now), None
        except AccessDeniedError:
            return None, None
    return None, None


def _location_panel(session: Session, principal: Principal, loan_id: str, now: int, *,
                    track: dict[str, Any] | None, refusal: str | None) -> dict[str, Any]:
    """What the loan page's track card offers when it shows no map: the reason form or the request form."""
    if principal.role not in PAGE_ROLES["track"]:
        return {"kind": None}
    if track is not None:
        return {"kind": "shown"}
    if principal.role in LOCATION_ROLES:
        return {"kind": "reason", "refusal": refusal}
    pending = [{"id": g.id, "reason": g.reason, "minutes": g.duration_ms // 60_000}
               for g in list_access_requests(session, loan_id=loan_id, status="pending")
               if g.requester == principal.key_id]
    return {"kind": "grant", "pending": pending, "emergency": bool(theft_signatures(session, loan_id, now))}


def _evidence_items(evidence: Any, *, show_places: bool, located: bool) -> list[tuple[str, str]]:
    """Evidence as the loan page lists it: coordinates only next to an authorised track read."""
    return catalog.evidence_items(evidence if located else redact_coordinates(evidence), show_places=show_places)


def _reason_views(
    state: RiskStateRecord | None, principal: Principal, zone_name: str, *, show_places: bool, located: bool = True
) -> list[dict[str, Any]]:
    """The loan's stored reasons as the page shows them (collections: no score figures)."""
    reasons = list(state.reasons) if state is not None else []
    if not _may_see_scores(principal):
        reasons = reasons_for_collections(reasons)
    return [
        {
            "code": r.get("code"),
            "level": r.get("level"),
            "next_step": r.get("next_step"),
            "sentence": catalog.reason_sentence(r, principal.locale, zone_name, show_places=show_places),
            "evidence": _evidence_items(r.get("evidence"), show_places=show_places, located=located),
            "contribution": catalog.contribution_text(r, principal.locale),
        }
        for r in reasons
    ]


def _score_view(state: RiskStateRecord | None) -> dict[str, Any] | None:
    """The stored v2 answer for the loan page's score card (None until a v2 reassessment)."""
    if state is None or not isinstance(state.assessment, dict):
        return None
    stored = state.assessment
    axes = []
    for name in ("credit", "collateral"):
        axis = stored.get(name) or {}
        axes.append({
            "name": name,
            "probability": float(axis.get("probability", 0.0)),
            "level": axis.get("level", "normal"),
            "next_step": axis.get("next_step", "monitor"),
            "reasons": [r | {"explanation": r} for r in axis.get("reasons", [])],
        })
    return {
        "score": float(stored.get("score", 0.0)),
        "expected_loss": format_cents(int(stored.get("expected_loss_cents", 0))),
        "outstanding": format_cents(int(stored.get("outstanding_cents", 0))),
        "tier": stored.get("tier"),
        "monitoring": stored.get("monitoring") or {},
        "model_version": stored.get("model_version"),
        "axes": axes,
    }


@router.post("/loans/{loan_id}/assess", response_model=None)
async def assess_from_console(loan_id: str, request: Request, principal: PagePrincipal) -> Response:
    """Reassess the loan now (analysts and admins; CSRF token required)."""
    _allow(principal, "assess")
    await _checked_form(request, principal)
    settings = _wiring(request).settings
    with Session(_engine(request)) as session:
        if session.get(LoanRecord, loan_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"loan {loan_id!r:.80} does not exist")
        reassess_loan_as_configured(
            session, loan_id, _now_ms(request), settings.risk, settings.webhooks.urls, cases=settings.cases
        )
        _audit(session, request, principal, "assess_loan", "loan", subject_id=loan_id)
        session.commit()
    return RedirectResponse(f"/console/loans/{loan_id}", status.HTTP_303_SEE_OTHER)


def _export_track(request: Request, principal: Principal, loan_id: str, kind: str) -> tuple[str, list[MapPoint]]:
    _allow(principal, "track")
    with Session(_engine(request)) as session:
        loan = session.get(LoanRecord, loan_id)
        if loan is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"loan {loan_id!r:.80} does not exist")
        since, until = _track_window(request, _loan_zone(loan), _now_ms(request))
        access = authorize_location(session, _now_ms(request), principal, loan_id, scope="track",
                                    reason=request.query_params.get("reason"))
        points, _ = _track_points(session, loan.device_id, since, until)
        _audit(session, request, principal, f"export_track_{kind}", "loan", subject_id=loan_id, from_ms=since,
               to_ms=until, points=len(points), **access.audit_detail())
        session.commit()
    return loan_id, points


@router.get("/loans/{loan_id}/track.geojson", response_model=None)
def track_geojson_export(loan_id: str, request: Request, principal: PagePrincipal) -> Response:
    """The track of the period as GeoJSON (path + stops), audited; a ``reason`` or a grant as for the page."""
    loan_id, points = _export_track(request, principal, loan_id, "geojson")
    body = json.dumps(track_geojson(loan_id, points, find_stops(points)), separators=(",", ":"))
    return Response(body, media_type="application/geo+json", headers={
        "Content-Disposition": f'attachment; filename="{loan_id}-track.geojson"', "Cache-Control": "no-store"})


@router.get("/loans/{loan_id}/track.gpx", response_model=None)
def track_gpx_export(loan_id: str, request: Request, principal: PagePrincipal) -> Response:
    """The track of the period as GPX 1.1, audited; a ``reason`` or a grant as for the page."""
    loan_id, points = _export_track(request, principal, loan_id, "gpx")
    return Response(track_gpx(loan_id, points), media_type="application/gpx+xml", headers={
        "Content-Disposition": f'attachment; filename="{loan_id}-track.gpx"', "Cache-Control": "no-store"})


MINUTES = re.compile(r"[0-9]{1,6}")


async def _access_form(
    request: Request, principal: Principal, loan_id: str, *, emergency: bool
) -> Response:
    """File an access request or take the emergency access from the loan page (collections; CSRF token)."""
    _allow(principal, "request_access")
    fields = await _checked_form(request, principal)
    now = _now_ms(request)
    action = "emergency_location_access" if emergency else "request_location_access"
    with Session(_engine(request)) as session:
        try:
            if emergency:
                grant = request_emergency_access(session, loan_id=loan_id, requester=principal.key_id,
                                                 requester_role=principal.role, reason=fields.get("reason", ""),
                                                 now_ms=now)
            else:
                minutes = fields.get("minutes", "").strip()
                if not MINUTES.fullmatch(minutes):
                    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "minutes must be a whole number")
                grant = request_access(session, loan_id=loan_id, requester=principal.key_id,
                                       requester_role=principal.role, reason=fields.get("reason", ""),
                                       scope=["track"], duration_ms=int(minutes) * 60_000, now_ms=now)
        except (AccessError, LoanNotFoundError) as exc:
            session.rollback()
            refused = "emergency_access_refused" if emergency else "access_request_refused"
            _audit(session, request, principal, refused, "loan", subject_id=loan_id, error=str(exc))
            session.commit()
            code = (status.HTTP_404_NOT_FOUND if isinstance(exc, LoanNotFoundError) else
                    status.HTTP_403_FORBIDDEN if isinstance(exc, AccessDeniedError) else
                    status.HTTP_422_UNPROCESSABLE_CONTENT)
            raise HTTPException(code, str(exc)) from exc
        _audit(session, request, principal, action, "loan", subject_id=loan_id, grant_id=grant.id,
               status=grant.status, emergency=grant.emergency)
        session.commit()
    return RedirectResponse(f"/console/loans/{loan_id}#track", status.HTTP_303_SEE_OTHER)


@router.post("/loans/{loan_id}/access-request", response_model=None)
async def access_request_from_console(loan_id: str, request: Request, principal: PagePrincipal) -> Response:
    """File a track access request (reason, minutes) for a risk analyst or an admin to approve."""
    return await _access_form(request, principal, loan_id, emergency=False)


@router.post("/loans/{loan_id}/emergency-access", response_model=None)
async def emergency_access_from_console(loan_id: str, request: Request, principal: PagePrincipal) -> Response:
    """Take the emergency access while the vehicle shows a theft signature (flagged for review)."""
    return await _access_form(request, principal, loan_id, emergency=True)


# ------------------------------------------------------------------ vehicle condition

SOC_SIGNAL = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
LOW_VOLTAGE_SIGNAL = "Vehicle.LowVoltageBattery.CurrentVoltage"


def _daily_last_values(session: Session, device_id: str, name: str, since_ms: int, zone_name: str) -> dict[str, float]:
    """The last numeric reading of a signal on each day (in ``zone_name``) since ``since_ms``."""
    rows = session.execute(
        sa.select(SampleRecord.time_ms, SampleRecord.value)
        .where(SampleRecord.device_id == device_id, SampleRecord.name == name, SampleRecord.time_ms >= since_ms)
        .order_by(SampleRecord.time_ms)
    )
    zone = zone_info(zone_name)
    out: dict[str, float] = {}
    for time_ms, value in rows:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[datetime.fromtimestamp(time_ms / 1000, tz=zone).date().isoformat()] = float(value)
    return out


@router.get("/loans/{loan_id}/condition", response_model=None)
def condition_page(loan_id: str, request: Request, principal: PagePrincipal) -> Response:
    """The vehicle over the last 30 days: distance, driving hours, harsh events, odometer, battery."""
    _allow(principal, "loan")
    now = _now_ms(request)
    with Session(_engine(request)) as session:
        loan = session.get(LoanRecord, loan_id)
        if loan is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"loan {loan_id!r:.80} does not exist")
        zone_name = _loan_zone(loan)
        report = vehicle_condition(session, loan.device_id, utc_date(now))
        since = now - 30 * 86_400_000
        soc = _daily_last_values(session, loan.device_id, SOC_SIGNAL, since, zone_name)
        volts = _daily_last_values(session, loan.device_id, LOW_VOLTAGE_SIGNAL, since, zone_name)
        _audit(session, request, principal, "view_condition", "loan", subject_id=loan_id)
        session.commit()
    days = [d["day"] for d in report["days"]]
    charts = {
        "distance": bar_chart(days, [d["distance_km"] for d in report["days"]], unit="km", css_class="distance"),
        "driving": bar_chart(days, [d["driving_h"] for d in report["days"]], unit="h", css_class="driving"),
        "harsh": bar_chart(days, [d["harsh_accel"] + d["harsh_brake"] for d in report["days"]],
                           unit="harsh events", css_class="harsh"),
        "soc": bar_chart(days, [soc.get(d) for d in days], unit="% SoC", css_class="soc") if soc else "",
    }
    return _render(request, "condition.html", principal, {
        "loan_id": loan_id, "report": report, "charts": charts, "zone": zone_name,
        "rows": [{**d, "soc": soc.get(d["day"]), "volts": volts.get(d["day"])} for d in report["days"]],
    })


# ------------------------------------------------------------------ audit and devices


@router.get("/audit", response_model=None)
def audit_page(request: Request, principal: PagePrincipal) -> Response:
    """Who read what, when (auditors and admins), with filters."""
    _allow(principal, "audit")
    q = request.query_params
    zone_name = principal.time_zone
    try:
        since = parse_time(q["from"], default_zone=zone_name) if q.get("from") else None
        until = parse_time(q["to"], default_zone=zone_name) if q.get("to") else None
    except TimeFormatError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    actor = (q.get("actor") or "").strip()[:128] or None
    subject = (q.get("subject") or "").strip()[:128] or None
    action = (q.get("action") or "").strip()[:64] or None
    with Session(_engine(request)) as session:
        entries = query_audit_log(session, since_ms=since, until_ms=until, actor=actor, subject_id=subject,
                                  limit=1000)
        if action is not None:
            entries = [e for e in entries if e.action == action]
        rows = [{"time": format_time(e.time_ms, zone_name), "actor": e.actor, "role": e.role, "action": e.action,
                 "subject": f"{e.subject_type}:{e.subject_id}",
                 "detail": json.dumps(e.detail, separators=(",", ":"), sort_keys=True, ensure_ascii=False)}
                for e in entries[:300]]
        _audit(session, request, principal, "view_audit", "audit", subject_id="*", rows=len(rows))
        session.commit()
    return _render(request, "audit.html", principal, {"rows": rows, "query": {
        "from": q.get("from", ""), "to": q.get("to", ""), "actor": actor or "", "subject": subject or "",
        "action": action or ""}, "zone": zone_name})


@router.get("/places", response_model=None)
def places_page(request: Request, principal: PagePrincipal) -> Response:
    """The typed places pushed to the devices (markets, pawn lots, ports, ...), ``?type=`` filters."""
    _allow(principal, "places")
    wanted = request.query_params.get("type") or None
    types = [t.value for t in PlaceType]
    if wanted is not None and wanted not in types:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"type must be one of {types}")
    with Session(_engine(request)) as session:
        rows = place_items(session, None if wanted is None else [wanted])
    return _render(request, "places.html", principal, {"rows": rows, "types": types, "wanted": wanted})


@router.get("/devices", response_model=None)
def devices_page(request: Request, principal: PagePrincipal) -> Response:
    """Every device: online/offline, last seen, key status (admins)."""
    _allow(principal, "devices")
    now = _now_ms(request)
    with Session(_engine(request)) as session:
        rows = device_rows(session, now)
    zone_name = principal.time_zone
    for row in rows:
        row["last_seen"] = format_time(row["last_seen_ms"], zone_name)
    return _render(request, "devices.html", principal, {"rows": rows})
