"""Bulwark feeder service."""
