"""The roles a principal (an API key or a named console user) can carry.

A base module so that the settings (``[api_keys]``) and the people store
(:mod:`collector.storage.people`) check roles against one list without importing each other.
"""

from __future__ import annotations

__all__ = ["ROLES"]

#: Roles an API key or a console user can carry (see collector.api.auth).
ROLES = ("admin", "risk_analyst", "collections", "auditor")
