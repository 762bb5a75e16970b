"""task embeddings and run statuses: a task version's text embedding; runs.status without the unused "pending"

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

One nullable column on task_versions, `embedding_sha256`: the stored text embedding of the task's training
rows that `--init-from auto` ranks earlier tasks by (registry.training.embedding). Versions published before
this revision, and versions imported from a bundle, stay empty.

runs.status's CHECK constraint (ck_runs_status) loses "pending", a status nothing ever wrote; a run that
somehow holds it becomes "failed". On PostgreSQL the constraint is dropped and created again. On SQLite a
CHECK cannot be altered, and batch mode's copy of `runs` cannot replace it while other tables' foreign keys
point at it (see 0003), so the constraint's text in the schema is edited in place: SQLite's documented
procedure for changing a constraint the existing rows satisfy (https://www.sqlite.org/lang_altertable.html,
"Making Other Kinds Of Table Schema Changes"), inside the migration's transaction. Downgrading reverses both.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

WITH_PENDING = "status IN ('pending', 'running', 'succeeded', 'failed', 'interrupted')"
WITHOUT_PENDING = "status IN ('running', 'succeeded', 'failed', 'interrupted')"


def upgrade() -> None:
    """Upgrade schema."""
    if op.get_context().dialect.name == "sqlite":  # a named REFERENCES clause, as 0003 adds its columns
        op.execute("ALTER TABLE task_versions ADD COLUMN embedding_sha256 VARCHAR(64) "
                   "CONSTRAINT fk_task_versions_embedding_sha256_artifacts REFERENCES artifacts (sha256)")
    else:
        op.add_column('task_versions', sa.Column('embedding_sha256', sa.String(length=64), nullable=True))
        op.create_foreign_key(op.f('fk_task_versions_embedding_sha256_artifacts'), 'task_versions', 'artifacts',
                              ['embedding_sha256'], ['sha256'])
    op.execute("UPDATE runs SET status = 'failed' WHERE status = 'pending'")
    run_status_check(WITH_PENDING, WITHOUT_PENDING)


def downgrade() -> None:
    """Downgrade schema."""
    run_status_check(WITHOUT_PENDING, WITH_PENDING)
    if op.get_context().dialect.name != "sqlite":  # SQLite drops a column's inline constraint with the column
        op.drop_constraint(op.f('fk_task_versions_embedding_sha256_artifacts'), 'task_versions', type_='foreignkey')
    with op.batch_alter_table('task_versions', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('embedding_sha256')


def run_status_check(old: str, new: str) -> None:
    """Replace ck_runs_status's condition `old` by `new`."""
    if op.get_context().dialect.name != "sqlite":
        op.drop_constraint(op.f('ck_runs_status'), 'runs', type_='check')
        op.create_check_constraint(op.f('ck_runs_status'), 'runs', new)
        return
    version = op.get_bind().exec_driver_sql("PRAGMA schema_version").scalar()
    op.execute("PRAGMA writable_schema = ON")
    op.execute(sa.text("UPDATE sqlite_master SET sql = replace(sql, :old, :new) WHERE type = 'table' AND "
                       "name = 'runs'").bindparams(old=old, new=new))
    op.execute(f"PRAGMA schema_version = {version + 1}")  # other connections read the schema again
    op.execute("PRAGMA writable_schema = OFF")
