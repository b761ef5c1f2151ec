"""evidence.detections and evidence.model_version: what the model saw in an original frame

Existing evidence keeps NULL detections (unknown) and an empty version.

Revision ID: 0004_frame_detections
Revises: 0003_hardening
"""
from alembic import op
import sqlalchemy as sa

revision = "0004_frame_detections"
down_revision = "0003_hardening"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evidence") as batch:
        batch.add_column(sa.Column("detections", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("model_version", sa.String(length=64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("evidence") as batch:
        batch.drop_column("model_version")
        batch.drop_column("detections")
