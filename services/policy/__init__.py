"""Bulwark policy service."""
