"""task versions: every published version of a task, a current-version pointer, retirement, the log of their moves

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Each ready task becomes its version 1, current, with the adapter, config, score and data it had, and
a `publish` event for it; its evaluations are of that version. Downgrading keeps each task as its
current version and drops the others (and the retirement marks and the events).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The run that produced a ready task's adapter (the latest, should several have produced the same bytes).
PUBLISHED_RUN = ("SELECT {column} FROM runs WHERE runs.task_id = tasks.id "
                 "AND runs.adapter_sha256 = tasks.adapter_sha256 ORDER BY runs.id DESC LIMIT 1")
BEFORE_VERSIONS = "the task as published before versions (schema 0002)"


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('task_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('data_source', sa.String(length=1024), nullable=True),
    sa.Column('data_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('adapter_size', sa.Integer(), nullable=False),
    sa.Column('adapter_sha256', sa.String(length=64), nullable=False),
    sa.Column('config_sha256', sa.String(length=64), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('trainable_params', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('why', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['adapter_sha256'], ['artifacts.sha256'],
                            name=op.f('fk_task_versions_adapter_sha256_artifacts')),
    sa.ForeignKeyConstraint(['config_sha256'], ['artifacts.sha256'],
                            name=op.f('fk_task_versions_config_sha256_artifacts')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_task_versions_run_id_runs')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_versions_task_id_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_versions')),
    sa.UniqueConstraint('task_id', 'version', name=op.f('uq_task_versions_task_id_version'))
    )
    op.create_table('task_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('by', sa.String(length=255), nullable=False),
    sa.Column('why', sa.Text(), nullable=True),
    sa.CheckConstraint("action IN ('publish', 'promote', 'retire', 'restore')", name=op.f('ck_task_events_action')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_events_task_id_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_events'))
    )
    with op.batch_alter_table('task_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_events_task_id'), ['task_id'], unique=False)
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('current_version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), nullable=True))

    op.execute(
        "INSERT INTO task_versions (task_id, version, run_id, data_source, data_fingerprint, adapter_size, "
        "adapter_sha256, config_sha256, score, trainable_params, created_at, why) "
        f"SELECT id, 1, ({PUBLISHED_RUN.format(column='id')}), data_source, "
        f"({PUBLISHED_RUN.format(column='data_fingerprint')}), adapter_size, adapter_sha256, config_sha256, score, "
        f"trainable_params, COALESCE(ready_at, created_at), '{BEFORE_VERSIONS}' FROM tasks WHERE status = 'ready'")
    op.execute(
        "INSERT INTO task_events (task_id, version, action, at, by, why) "
        f"SELECT id, 1, 'publish', COALESCE(ready_at, created_at), 'registry db upgrade', '{BEFORE_VERSIONS}' "
        "FROM tasks WHERE status = 'ready' ORDER BY position")
    op.execute("UPDATE tasks SET current_version = 1 WHERE status = 'ready'")
    op.execute("UPDATE evaluations SET version = 1 WHERE task_id IN (SELECT id FROM tasks WHERE status = 'ready')")


def downgrade() -> None:
    """Downgrade schema."""
    # ALTER TABLE … DROP COLUMN (SQLite >= 3.35) rather than batch mode's copy of the table, which SQLite
    # refuses to drop while other tables' foreign keys point at it.
    with op.batch_alter_table('evaluations', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('version')
    with op.batch_alter_table('tasks', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('retired_at')
        batch_op.drop_column('current_version')
    op.drop_table('task_events')
    op.drop_table('task_versions')
