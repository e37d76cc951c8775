"""Collections cases and the contact rules (issue #16, "Cases and contact rules").

* :mod:`collector.cases.settings` - ``[cases]`` SLAs and ``[contact]`` rules per jurisdiction.
* :mod:`collector.cases.contact_rules` - pure: may the borrower be contacted now, else why and from when.
* :mod:`collector.cases.store` - cases opened and closed by risk, actions with outcomes,
  assignments, promises to pay and their escalation.
* :mod:`collector.cases.staff` - disabling a user, or a role that holds no cases, hands their
  open cases over (to a named user or the unassigned queue).

A layer between ``collector.risk`` (which opens and closes cases as levels change) and
``collector.jobs``; it imports only storage and the base modules.
"""
