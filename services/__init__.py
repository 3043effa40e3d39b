"""Bulwark's services: monitor, enforcer, identity, policy and feeder."""
