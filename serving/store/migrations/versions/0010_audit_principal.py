"""audit: the principal's kind and id beside the actor's name

Revision ID: 0010_audit_principal
Revises: 0009_evidence_chain
"""
from alembic import op
import sqlalchemy as sa

revision = "0010_audit_principal"
down_revision = "0009_evidence_chain"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("actor_kind", sa.String(length=16), nullable=False, server_default="system"))
        batch.add_column(sa.Column("actor_id", sa.String(length=64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("actor_id")
        batch.drop_column("actor_kind")
