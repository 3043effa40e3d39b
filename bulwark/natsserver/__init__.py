"""The bundled nats-server: its configuration, the process the supervisor runs, and deployment files."""
