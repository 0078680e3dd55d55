"""Proposal policies behind one interface (agents.base.Policy); create_policy(name) builds one."""
