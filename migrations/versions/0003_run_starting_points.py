"""run starting points: the earlier task a run's adapters started from, and how `--init-from` chose it

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

Four nullable columns on runs: `init_task_id`, `init_version` and `init_adapter_sha256` (the source task's
version and adapter bytes) and `selection` (the figures `--init-from auto` chose by). Every run recorded
before this revision started from scratch, so they stay empty. Downgrading drops them.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# A starting point's foreign keys: (column, type, referred table, referred column).
REFERENCES = (("init_task_id", "INTEGER", "tasks", "id"), ("init_adapter_sha256", "VARCHAR(64)", "artifacts", "sha256"))


def upgrade() -> None:
    """Upgrade schema."""
    if op.get_context().dialect.name == "sqlite":
        # ALTER TABLE … ADD COLUMN with a named REFERENCES clause (SQLite allows it for a column NULL by default),
        # not batch mode's copy of `runs`, which SQLite refuses to drop while other tables' foreign keys point at it.
        for column, kind, table, key in REFERENCES:
            op.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind} "
                       f"CONSTRAINT fk_runs_{column}_{table} REFERENCES {table} ({key})")
    else:
        for column, kind, table, key in REFERENCES:
            op.add_column('runs', sa.Column(column, sa.Integer() if kind == "INTEGER" else sa.String(length=64),
                                            nullable=True))
            op.create_foreign_key(op.f(f'fk_runs_{column}_{table}'), 'runs', table, [column], [key])
    op.add_column('runs', sa.Column('init_version', sa.Integer(), nullable=True))
    op.add_column('runs', sa.Column('selection', sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_context().dialect.name != "sqlite":  # SQLite drops a column's inline constraint with the column
        for column, _, table, _ in REFERENCES:
            op.drop_constraint(op.f(f'fk_runs_{column}_{table}'), 'runs', type_='foreignkey')
    with op.batch_alter_table('runs', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('selection')
        batch_op.drop_column('init_version')
        for column, _, _, _ in REFERENCES:
            batch_op.drop_column(column)
