"""The bulwark command line: up, status, apply, delete, get, run."""
