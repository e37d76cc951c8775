"""People: named users with a role, their passwords and their console sessions.

How this works
--------------
One user model serves the API, the console, the audit log and (later) case assignment
(docs/people.md). A person is a row of ``users``: ``username``, ``display_name``, ``role``
(one of :data:`collector.roles.ROLES`), a scrypt password hash, a ``locale`` (``en`` or
``zh-CN``) and a ``time_zone`` (IANA name). An API key from ``[api_keys]`` is a principal
too, without a user row. Both become one :class:`collector.api.auth.Principal`, whose ``key_id``
is the audit actor: ``user:{username}`` for a person, the key's hash prefix for a key.

A console session is a random token in an HttpOnly, SameSite=Strict cookie; the database
keeps only its SHA-256 (``console_sessions``) with the principal it stands for, a CSRF token
(sent back by every write, as a form field or the ``X-CSRF-Token`` header), the last time it
was used (idle expiry) and an absolute expiry. Signing in with an API key exchanges the key
(posted in the form body, never in a URL) for such a session.

Passwords: ``hashlib.scrypt`` (n=2**14, r=8, p=1, 16-byte salt, 32-byte key), stored as
``scrypt$n$r$p$salt_b64$hash_b64`` and compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from ..errors import CollectorError
from ..roles import ROLES
from .tables import AuditEntry, Base

__all__ = [
    "DEFAULT_TIME_ZONE",
    "LOCALES",
    "SESSION_COOKIE",
    "ConsoleSession",
    "LastAdminError",
    "PeopleError",
    "SelfLockoutError",
    "SessionRecord",
    "UserRecord",
    "add_user",
    "authenticate_user",
    "check_password",
    "check_time_zone",
    "end_session",
    "find_session",
    "hash_password",
    "last_sign_ins",
    "list_users",
    "open_session",
    "purge_sessions",
    "set_disabled",
    "set_password",
    "set_role",
    "update_session_locale",
    "verify_password",
]

#: Languages of the console's message catalog.
LOCALES = ("en", "zh-CN")
DEFAULT_TIME_ZONE = "Asia/Shanghai"
SESSION_COOKIE = "lw_session"
_USERNAME = re.compile(r"[a-z][a-z0-9_.-]{1,63}")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024


class PeopleError(CollectorError, ValueError):
    """A user or session operation was refused (bad name, role, locale, zone or password)."""


class LastAdminError(PeopleError):
    """The change would leave no enabled admin (nobody could manage users any more)."""


class SelfLockoutError(PeopleError):
    """An admin tried to disable themselves or take away their own admin role."""


class UserRecord(Base):
    """A named person who signs in to the console (and is an audit actor)."""

    __tablename__ = "users"

    username: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(sa.String(200))
    role: Mapped[str] = mapped_column(sa.String(32))
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    locale: Mapped[str] = mapped_column(sa.String(8))
    time_zone: Mapped[str] = mapped_column(sa.String(64))
    disabled: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_ms: Mapped[int]
    updated_ms: Mapped[int]


class SessionRecord(Base):
    """A console session: the SHA-256 of its cookie token and whom it stands for."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    username: Mapped[str | None] = mapped_column(
        sa.String(64), sa.ForeignKey("users.username", ondelete="CASCADE"), index=True
    )
    actor: Mapped[str] = mapped_column(sa.String(128))
    role: Mapped[str] = mapped_column(sa.String(32))
    display_name: Mapped[str] = mapped_column(sa.String(200))
    locale: Mapped[str] = mapped_column(sa.String(8))
    time_zone: Mapped[str] = mapped_column(sa.String(64))
    csrf_token: Mapped[str] = mapped_column(sa.String(64))
    created_ms: Mapped[int]
    last_seen_ms: Mapped[int] = mapped_column(index=True)
    expires_ms: Mapped[int]


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A live session as the console sees it (the token itself is only in the cookie)."""

    actor: str
    role: str
    username: str | None
    display_name: str
    locale: str
    time_zone: str
    csrf_token: str
    last_seen_ms: int


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The stored form of ``password`` (scrypt, random salt)."""
    check_password(password)
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, maxmem=64 << 20, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches the stored hash (constant-time compare; False on junk)."""
    if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD_CHARS:
        return False
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, expected = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
        if not (2 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected),
                             maxmem=256 << 20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(key, expected)


def check_password(password: str) -> None:
    """Refuse a password that is too short or too long.

    Raises:
        PeopleError: fewer than :data:`MIN_PASSWORD_CHARS` or more than 1024 characters.
    """
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise PeopleError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise PeopleError(f"a password has at most {MAX_PASSWORD_CHARS} characters")


def check_time_zone(name: str) -> str:
    """``name`` if it is a known IANA time zone.

    Raises:
        PeopleError: unknown zone.
    """
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PeopleError(f"time zone {name!r:.64} is not an IANA zone name (e.g. Asia/Shanghai)") from None
    return name


def _check_user_fields(username: str, role: str, locale: str, time_zone: str) -> None:
    if not _USERNAME.fullmatch(username):
        raise PeopleError(f"user name {username!r:.70} must match [a-z][a-z0-9_.-]{{1,63}}")
    if role not in ROLES:
        raise PeopleError(f"role {role!r:.40} is not one of {', '.join(ROLES)}")
    if locale not in LOCALES:
        raise PeopleError(f"locale {locale!r:.20} is not one of {', '.join(LOCALES)}")
    check_time_zone(time_zone)


def add_user(
    session: Session,
    *,
    username: str,
    display_name: str,
    role: str,
    password: str,
    now_ms: int,
    locale: str = "en",
    time_zone: str = DEFAULT_TIME_ZONE,
) -> UserRecord:
    """Create a user (flushed, not committed).

    Raises:
        PeopleError: bad field, weak password, or the user name is taken.
    """
    _check_user_fields(username, role, locale, time_zone)
    if not display_name.strip() or len(display_name) > 200:
        raise PeopleError("a display name is 1..200 characters")
    if session.get(UserRecord, username) is not None:
        raise PeopleError(f"user {username} already exists")
    user = UserRecord(
        username=username,
        display_name=display_name.strip(),
        role=role,
        password_hash=hash_password(password),
        locale=locale,
        time_zone=time_zone,
        disabled=False,
        created_ms=now_ms,
        updated_ms=now_ms,
    )
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, username: str, password: str, *, now_ms: int) -> None:
    """Replace a user's password and end every session of theirs.

    Raises:
        PeopleError: no such user, or a weak password.
    """
    user = _existing(session, username)
    user.password_hash = hash_password(password)
    user.updated_ms = now_ms
    _end_sessions(session, username)
    session.flush()


def _existing(session: Session, username: str) -> UserRecord:
    user = session.get(UserRecord, username)
    if user is None:
        raise PeopleError(f"user {username!r:.70} does not exist")
    return user


def _end_sessions(session: Session, username: str) -> None:
    session.execute(sa.delete(SessionRecord).where(SessionRecord.username == username))


def _other_enabled_admins(session: Session, username: str) -> int:
    """How many enabled admins besides ``username``, with their rows locked (``FOR UPDATE``).

    The lock makes two admins who disable (or demote) each other at the same moment run one
    after the other on PostgreSQL, so the second sees the first's change and is refused rather
    than both succeeding and leaving no admin. SQLite runs one writer at a time anyway.
    """
    admins = session.scalars(
        sa.select(UserRecord.username)
        .where(UserRecord.role == "admin", UserRecord.disabled.is_(False))
        .order_by(UserRecord.username)
        .with_for_update()
    ).all()
    return sum(1 for name in admins if name != username)


def _keep_an_admin(session: Session, user: UserRecord, *, acting_username: str | None, losing_admin: bool) -> None:
    if user.username == acting_username and losing_admin:
        raise SelfLockoutError("you cannot disable yourself or take away your own admin role")
    if not losing_admin or user.role != "admin" or user.disabled:
        return
    if _other_enabled_admins(session, user.username) == 0:
        raise LastAdminError(f"{user.username} is the last enabled admin; make another admin first")


def set_role(session: Session, username: str, role: str, *, now_ms: int, acting_username: str | None = None) -> str:
    """Give a user another role and end their sessions (a session carries the role it began with).

    Returns the previous role (the same role again changes nothing and keeps the sessions).

    Raises:
        PeopleError: no such user or an unknown role; :class:`SelfLockoutError` when
            ``acting_username`` demotes themselves; :class:`LastAdminError` when the last
            enabled admin would lose the role.
    """
    if role not in ROLES:
        raise PeopleError(f"role {role!r:.40} is not one of {', '.join(ROLES)}")
    user = _existing(session, username)
    old = user.role
    if old == role:
        return old
    _keep_an_admin(session, user, acting_username=acting_username, losing_admin=old == "admin")
    user.role = role
    user.updated_ms = now_ms
    _end_sessions(session, username)
    session.flush()
    return old


def set_disabled(
    session: Session, username: str, disabled: bool, *, now_ms: int, acting_username: str | None = None
) -> bool:
    """Disable (ending every session) or enable a user; returns the previous state.

    Raises:
        PeopleError: no such user; :class:`SelfLockoutError` when ``acting_username``
            disables themselves; :class:`LastAdminError` for the last enabled admin.
    """
    user = _existing(session, username)
    old = user.disabled
    if disabled and not old:
        _keep_an_admin(session, user, acting_username=acting_username, losing_admin=True)
    user.disabled = disabled
    user.updated_ms = now_ms
    if disabled:
        _end_sessions(session, username)
    session.flush()
    return old


def last_sign_ins(session: Session, usernames: list[str]) -> dict[str, int]:
    """The time of each user's last successful sign-in, from the audit log (``sign_in`` rows)."""
    if not usernames:
        return {}
    rows = session.execute(
        sa.select(AuditEntry.subject_id, sa.func.max(AuditEntry.time_ms))
        .where(AuditEntry.subject_type == "console", AuditEntry.action == "sign_in",
               AuditEntry.subject_id.in_(usernames))
        .group_by(AuditEntry.subject_id)
    )
    return {name: int(time_ms) for name, time_ms in rows}


def list_users(session: Session) -> list[dict[str, Any]]:
    """Every user without the password hash."""
    return [
        {
            "username": u.username,
            "display_name": u.display_name,
            "role": u.role,
            "locale": u.locale,
            "time_zone": u.time_zone,
            "disabled": u.disabled,
        }
        for u in session.scalars(sa.select(UserRecord).order_by(UserRecord.username))
    ]


def authenticate_user(session: Session, username: str, password: str) -> UserRecord | None:
    """The enabled user with this name and password, else ``None`` (same work either way)."""
    user = session.get(UserRecord, username) if _USERNAME.fullmatch(username or "") else None
    # Hash something even for an unknown name so a timing probe cannot list user names.
    stored = user.password_hash if user is not None else _DUMMY_HASH
    ok = verify_password(password, stored)
    if user is None or user.disabled or not ok:
        return None
    return user


_DUMMY_HASH = hash_password("not-a-real-password", salt=b"\x00" * 16)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def open_session(
    session: Session,
    *,
    actor: str,
    role: str,
    display_name: str,
    now_ms: int,
    max_age_ms: int,
    username: str | None = None,
    locale: str = "en",
    time_zone: str = DEFAULT_TIME_ZONE,
) -> tuple[str, ConsoleSession]:
    """Start a session; returns the cookie token (shown once) and the session.

    Raises:
        PeopleError: bad role, locale or zone.
    """
    if role not in ROLES:
        raise PeopleError(f"role {role!r:.40} is not one of {', '.join(ROLES)}")
    if locale not in LOCALES:
        raise PeopleError(f"locale {locale!r:.20} is not one of {', '.join(LOCALES)}")
    check_time_zone(time_zone)
    token = secrets.token_urlsafe(32)
    record = SessionRecord(
        token_hash=_token_hash(token),
        username=username,
        actor=actor[:128],
        role=role,
        display_name=display_name[:200],
        locale=locale,
        time_zone=time_zone,
        csrf_token=secrets.token_urlsafe(24),
        created_ms=now_ms,
        last_seen_ms=now_ms,
        expires_ms=now_ms + max_age_ms,
    )
    session.add(record)
    session.flush()
    return token, _as_session(record)


def _as_session(r: SessionRecord) -> ConsoleSession:
    return ConsoleSession(r.actor, r.role, r.username, r.display_name, r.locale, r.time_zone, r.csrf_token,
                          r.last_seen_ms)


#: A session is touched (``last_seen_ms`` written) at most this often.
TOUCH_EVERY_MS = 15_000


def find_session(session: Session, token: str, *, now_ms: int, idle_ms: int) -> ConsoleSession | None:
    """The live session of a cookie token, touched; ``None`` (and deleted) when idle or expired."""
    if not token or len(token) > 128:
        return None
    record = session.get(SessionRecord, _token_hash(token))
    if record is None:
        return None
    if now_ms - record.last_seen_ms > idle_ms or now_ms >= record.expires_ms:
        session.delete(record)
        session.flush()
        return None
    if now_ms - record.last_seen_ms >= TOUCH_EVERY_MS:
        record.last_seen_ms = now_ms
        session.flush()
    return _as_session(record)


def update_session_locale(session: Session, token: str, locale: str) -> None:
    """Switch the language of a session (and of its user, when it has one).

    Raises:
        PeopleError: unknown locale.
    """
    if locale not in LOCALES:
        raise PeopleError(f"locale {locale!r:.20} is not one of {', '.join(LOCALES)}")
    record = session.get(SessionRecord, _token_hash(token))
    if record is None:
        return
    record.locale = locale
    if record.username is not None:
        user = session.get(UserRecord, record.username)
        if user is not None:
            user.locale = locale
    session.flush()


def end_session(session: Session, token: str) -> None:
    """Delete the session of a cookie token (sign-out); nothing if unknown."""
    session.execute(sa.delete(SessionRecord).where(SessionRecord.token_hash == _token_hash(token)))


def purge_sessions(session: Session, *, now_ms: int, idle_ms: int) -> int:
    """Delete idle and expired sessions; returns how many."""
    result = session.execute(
        sa.delete(SessionRecord).where(
            sa.or_(SessionRecord.last_seen_ms < now_ms - idle_ms, SessionRecord.expires_ms <= now_ms)
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
