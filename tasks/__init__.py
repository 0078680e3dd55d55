"""Prefect tasks the flows compose: extract, propose, dedup, train, evaluate, heal, record."""
