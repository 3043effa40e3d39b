"""Bulwark identity service."""
