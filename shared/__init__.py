"""Bulwark's common code: settings, subjects, schemas, codecs and the NATS helper."""
