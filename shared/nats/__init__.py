"""NATS for every service: connection and streams, subjects, per-service credentials and accounts."""
