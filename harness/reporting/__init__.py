"""Reporting: HTML pages that mirror the paper's tables, figures and ablations, read from the store."""
