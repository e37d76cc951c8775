"""Risk: repayment facts, the v1 rule table, the v2 explained score, and keeping every loan's risk state current.

* :mod:`collector.risk.repayments` - pure: schedules and payments -> repayment facts.
* :mod:`collector.risk.engine` - pure: the v1 rule table (facts + alerts + device -> level).
* :mod:`collector.risk.features` / :mod:`collector.risk.score` / :mod:`collector.risk.model` -
  pure: the v2 explained score (features, logistic model, two axes, tiers).
* :mod:`collector.risk.synthetic_book` / :mod:`collector.risk.backtest` - the labelled book
  and the comparison of v1 and v2.
* :mod:`collector.risk.assessment` - reads a stored loan's inputs, runs the engine and the
  v2 score, keeps the state.
* :mod:`collector.risk.worker` - the thread that reassesses after ingest and periodically.
"""
