"""The loan book: importing it, storing loans and payments, listing loans with their risk.

* :mod:`collector.loans.csv_import` - the CSV loan book (sans-I/O parser, then import).
* :mod:`collector.loans.store` - store a loan, record a payment, list loans, vehicle condition.
"""
