"""cluster mode: when the serving process last renewed a camera lease

Revision ID: 0011_lease_renewal
Revises: 0010_audit_principal
"""
from alembic import op
import sqlalchemy as sa

revision = "0011_lease_renewal"
down_revision = "0010_audit_principal"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("camera_leases") as batch:
        batch.add_column(sa.Column("renewed_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("camera_leases") as batch:
        batch.drop_column("renewed_at")
