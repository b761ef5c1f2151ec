"""the truck load decision on the case: case_events.stage_label/stage_score (what the load
stage said of each sighting) and cases.review_load (what the reviewer said the load was)

All nullable: events and decisions stored before, and cases of other violations, have none.

Revision ID: 0013_load_decision
Revises: 0012_evidence_moments
"""
from alembic import op
import sqlalchemy as sa

revision = "0013_load_decision"
down_revision = "0012_evidence_moments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("case_events") as batch:
        batch.add_column(sa.Column("stage_label", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("stage_score", sa.Float(), nullable=True))
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("review_load", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("review_load")
    with op.batch_alter_table("case_events") as batch:
        batch.drop_column("stage_score")
        batch.drop_column("stage_label")
