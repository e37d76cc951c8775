"""Versioned v2 risk model files (package data; see collector.risk.model)."""
