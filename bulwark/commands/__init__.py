"""The CLI's subcommands that are more than a call to the REST API: logs, policy files, summary, NATS accounts."""
