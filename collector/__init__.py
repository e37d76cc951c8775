"""LienWatch cloud collector: verified ingest, storage, loans, risk state and API.

The folders follow the data path; imports point down this list (import-linter checks it):

* :mod:`collector.cli` - ``lienwatch collector ...`` / ``python -m collector ...``
* :mod:`collector.runtime` - what ``serve`` runs: ingest, workers and the API of one process
* :mod:`collector.api` - the FastAPI app, its routers, authentication and dependencies
* :mod:`collector.loans` - the loan book: CSV import, loans, payments, lists
* :mod:`collector.risk` - repayment facts, the rule table, reassessment and its worker
* :mod:`collector.jobs` - background jobs on one worker loop: webhooks, retention, downlink
* :mod:`collector.ingest` - MQTT ingest: verify, decode, store idempotently, dead-letter
* :mod:`collector.storage` - every table, engines and migrations, the audit log
* :mod:`collector.settings` (the one settings object), :mod:`collector.errors` (the error
  tree), :mod:`collector.clock`, :mod:`collector.json_values`, :mod:`collector.files`
"""

__all__: list[str] = []
