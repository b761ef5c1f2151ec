"""evidence chain: append-only hash chain of evidence and decisions, signed heads; evidence rows know their chain position

Revision ID: 0009_evidence_chain
Revises: 0008_cluster
"""
from alembic import op
import sqlalchemy as sa

revision = "0009_evidence_chain"
down_revision = "0008_cluster"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence_chain",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.String(length=40), nullable=False),
        sa.Column("case_number", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False, server_default=""),
        sa.Column("detail", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_evidence_chain_case", "evidence_chain", ["case_number", "seq"])
    op.create_table(
        "chain_heads",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("timestamp_token", sa.LargeBinary(), nullable=True),
        sa.Column("signed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_chain_heads_seq", "chain_heads", ["seq"])
    with op.batch_alter_table("evidence") as batch:
        batch.add_column(sa.Column("chain_seq", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("masks", sa.String(length=64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("evidence") as batch:
        batch.drop_column("masks")
        batch.drop_column("chain_seq")
    op.drop_index("ix_chain_heads_seq", table_name="chain_heads")
    op.drop_table("chain_heads")
    op.drop_index("ix_evidence_chain_case", table_name="evidence_chain")
    op.drop_table("evidence_chain")
