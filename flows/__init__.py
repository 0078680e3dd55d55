"""Prefect flows and the crashsearch CLI."""
