"""Bulwark enforcer service."""
