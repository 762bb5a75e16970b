"""registry id: the id a registry's store marker names, so that only a registry's own store is ever pruned

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

One nullable column on bases, `registry_id`. `init` writes it with the store's marker (registry-store.json,
see registry.storage.ownership); a registry made before stays empty until its first `verify --prune` adopts its store.
Downgrading drops it.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('bases', sa.Column('registry_id', sa.String(length=32), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('bases', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('registry_id')
