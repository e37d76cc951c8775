"""The OpenAPI document says what the API really answers.

FastAPI documents every 422 as its own ``HTTPValidationError`` (``detail``: a list of
``{loc, msg, type}``), but the routes also answer 422 with a sentence (an invalid public
key, a market that does not parse) or a list of row errors (a loan that fails the CSV
rules). :func:`document_refusals` widens that one schema so a client generated from the
document, and schemathesis' response check, accept every 422 the API sends.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["document_refusals"]


def document_refusals(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one whose ``HTTPValidationError.detail`` allows every form sent."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = document.get("components", {}).get("schemas", {})
        error = schemas.get("HTTPValidationError")
        if error is not None:
            error["properties"]["detail"] = {
                "title": "Detail",
                "anyOf": [
                    {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
                    {"type": "string"},
                    {"type": "array", "items": {"type": "object"}},
                ],
            }
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
