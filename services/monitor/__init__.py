"""Bulwark monitor service."""
