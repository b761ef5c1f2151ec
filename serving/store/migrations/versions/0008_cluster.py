"""cluster mode: camera leases with fencing numbers

Revision ID: 0008_cluster
Revises: 0007_recheck
"""
from alembic import op
import sqlalchemy as sa

revision = "0008_cluster"
down_revision = "0007_recheck"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "camera_leases",
        sa.Column("camera", sa.String(length=128), nullable=False),
        sa.Column("worker", sa.String(length=64), nullable=True),
        sa.Column("node", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("fencing", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("granted_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("camera"),
    )


def downgrade() -> None:
    op.drop_table("camera_leases")
