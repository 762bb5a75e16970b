"""Alembic environment. Works from the CLI (which sets sqlalchemy.url) and as plain `alembic -c alembic.ini`."""

from logging.config import fileConfig

from alembic import context

from registry.storage import config as registry_config
from registry.storage import schema
from registry.storage.db import make_engine

alembic_config = context.config
if alembic_config.config_file_name is not None:
    fileConfig(alembic_config.config_file_name, disable_existing_loggers=False)

url = alembic_config.get_main_option("sqlalchemy.url") or registry_config.resolve().db_url
target_metadata = schema.metadata
MIGRATION_LOCK = 0x72656769  # any constant: the advisory lock every migration of a PostgreSQL database takes


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        # Two `init`s on a new database: one migrates while the other waits, then finds the schema at head. So the
        # whole upgrade is one transaction, its version read inside it: on SQLite too (alembic's default there is a
        # transaction per migration, which let the other process in between two migrations to run one again), under
        # BEGIN IMMEDIATE (registry.db.make_engine); SQLite's DDL is transactional.
        connection.execution_options(registry_write=True)
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          transactional_ddl=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
