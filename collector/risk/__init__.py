"""Loan risk: repayment facts, the v1 rule table, the v2 explained score, and the worker.

Modules: :mod:`.repayments` (facts, pure), :mod:`.engine` (the v1 rule table, pure),
:mod:`.features` / :mod:`.score` / :mod:`.model` (the v2 score, pure), :mod:`.synthetic_book`
and :mod:`.backtest` (the labelled book and the comparison of v1 and v2), :mod:`.worker`
(keeps every stored loan's state current).
"""
