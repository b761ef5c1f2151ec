"""active learning: the labelling queue of unsure frames

Revision ID: 0006_labelling
Revises: 0005_review
"""
from alembic import op
import sqlalchemy as sa

revision = "0006_labelling"
down_revision = "0005_review"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "labelling_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("camera", sa.String(length=128), nullable=False),
        sa.Column("taken_at", sa.DateTime(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("detections", sa.JSON(), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("media_type", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("boxes", sa.JSON(), nullable=True),
        sa.Column("labelled_by", sa.String(length=64), nullable=False),
        sa.Column("labelled_at", sa.DateTime(), nullable=True),
        sa.Column("leased_by", sa.String(length=64), nullable=False),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_labelling_status", "labelling_items", ["status", "id"])
    op.create_index("ix_labelling_camera_taken", "labelling_items", ["camera", "taken_at"])


def downgrade() -> None:
    op.drop_index("ix_labelling_camera_taken", "labelling_items")
    op.drop_index("ix_labelling_status", "labelling_items")
    op.drop_table("labelling_items")
