"""evidence.moment and evidence.seen_at: the frames kept across an event's life (opened, best, update, closed)

Existing evidence keeps an empty moment and no time (shown by when it was stored).

Revision ID: 0012_evidence_moments
Revises: 0011_lease_renewal
"""
from alembic import op
import sqlalchemy as sa

revision = "0012_evidence_moments"
down_revision = "0011_lease_renewal"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evidence") as batch:
        batch.add_column(sa.Column("moment", sa.String(length=32), nullable=False, server_default=""))
        batch.add_column(sa.Column("seen_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evidence") as batch:
        batch.drop_column("seen_at")
        batch.drop_column("moment")
