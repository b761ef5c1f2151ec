"""re-checks of handled cases; per camera x violation review decisions, thresholds and their history

Revision ID: 0007_recheck
Revises: 0006_labelling
"""
from alembic import op
import sqlalchemy as sa

revision = "0007_recheck"
down_revision = "0006_labelling"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rechecks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("handled_at", sa.DateTime(), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("checked_at", sa.DateTime(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("iou", sa.Float(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rechecks_case_id", "rechecks", ["case_id"])
    op.create_index("ix_rechecks_due", "rechecks", ["state", "due_at"])
    op.create_table(
        "threshold_decisions",
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("camera", sa.String(length=128), nullable=False),
        sa.Column("violation", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("case_id"),
    )
    op.create_index("ix_threshold_decisions_pair", "threshold_decisions", ["camera", "violation", "decided_at"])
    op.create_table(
        "thresholds",
        sa.Column("camera", sa.String(length=128), nullable=False),
        sa.Column("violation", sa.String(length=64), nullable=False),
        sa.Column("confirmed", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("alert", sa.Float(), nullable=True),
        sa.Column("auto_confirm", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("camera", "violation"),
    )
    op.create_table(
        "threshold_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("camera", sa.String(length=128), nullable=False),
        sa.Column("violation", sa.String(length=64), nullable=False),
        sa.Column("confirmed", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("alert", sa.Float(), nullable=True),
        sa.Column("auto_confirm", sa.Float(), nullable=True),
        sa.Column("precision_at_alert", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_threshold_history_pair", "threshold_history", ["camera", "violation", "at"])
    # Decisions made before this migration count too: a reviewed case is a decision about the
    # violation it now has (a correction made earlier is not undone here). Duplicates and bad
    # images say nothing about the score, as in serving/cases/thresholds.py.
    op.execute(
        "INSERT INTO threshold_decisions (case_id, camera, violation, score, correct, decided_at) "
        "SELECT id, camera, violation, score, review_status IN ('confirmed', 'corrected'), "
        "COALESCE(reviewed_at, updated_at) FROM cases "
        "WHERE review_status IN ('confirmed', 'corrected', 'rejected') "
        "AND review_reason NOT IN ('duplicate', 'bad_image')"
    )


def downgrade() -> None:
    op.drop_index("ix_threshold_history_pair", "threshold_history")
    op.drop_table("threshold_history")
    op.drop_table("thresholds")
    op.drop_index("ix_threshold_decisions_pair", "threshold_decisions")
    op.drop_table("threshold_decisions")
    op.drop_index("ix_rechecks_due", "rechecks")
    op.drop_index("ix_rechecks_case_id", "rechecks")
    op.drop_table("rechecks")
