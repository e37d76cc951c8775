"""Risk: repayment facts, the rule table, and keeping every loan's risk state current.

* :mod:`collector.risk.repayments` - pure: schedules and payments -> repayment facts.
* :mod:`collector.risk.engine` - pure: the v1 rule table (facts + alerts + device -> level).
* :mod:`collector.risk.assessment` - reads a stored loan's inputs, runs the engine, keeps the state.
* :mod:`collector.risk.worker` - the thread that reassesses after ingest and periodically.
"""
