"""LienWatch cloud collector: verified ingest, storage, loans, risk state and API."""

__all__: list[str] = []
