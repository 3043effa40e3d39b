"""Schema migrations: ``upgrade head`` with the Alembic scripts in ``migrations/`` (run at start).

A database made by the first feeder version (tables from ``create_all``, no ``alembic_version``) is
stamped at revision 0001 first, so its data is kept and carried forward.
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect

__all__ = ["upgrade", "alembic_config", "MIGRATIONS_DIR", "head_revision"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """An Alembic config pointing at the feeder's migration scripts (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest revision id."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database behind ``engine`` to ``revision``."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        names = set(inspect(conn).get_table_names())
        if "alerts" in names and "alembic_version" not in names:
            command.stamp(cfg, "0001")
        command.upgrade(cfg, revision)
