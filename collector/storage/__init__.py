"""Storage: every table, the database engines and migrations, the audit log.

* :mod:`collector.storage.tables` - every table on one declarative ``Base``.
* :mod:`collector.storage.database` - engines (SQLite default, PostgreSQL), migrations at start.
* :mod:`collector.storage.audit` - appending to and reading the audit log.
* :mod:`collector.storage.places` - typed places (checked with :mod:`protocol.places`).
* ``collector/storage/migrations`` - the Alembic environment and revisions.

The bottom layer: it imports nothing of the collector but the base modules (:mod:`collector.errors`,
:mod:`collector.files`).
"""

# Every table on Base, whichever storage module a caller imports first: ``cases.assignee``
# (tables) refers to ``users`` (people), so a metadata built without people is incomplete.
from . import people as _people  # noqa: F401
