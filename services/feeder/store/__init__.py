"""Where alerts and logs are kept: SQLAlchemy models, migrations, queries and retention (SQLite or PostgreSQL)."""
