"""instance id: one random code per database, part of every new case number; key expiry

Case numbers were GW{date}-{row id}: two databases (two sites, or one reset) handed out the
same numbers, and with them the same Idempotency-Keys. Each database now draws an instance
code once, here; every process on the database reads it. Existing case numbers are kept.

api_keys.expires_at: a key that stops working at a time, so a rotated key and its successor
are both valid during an overlap (NULL: no expiry, as every existing key).

Revision ID: 0003_hardening
Revises: 0002
"""
import base64
import secrets

from alembic import op
import sqlalchemy as sa

revision = "0003_hardening"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=8), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # 30 random bits as 6 base32 characters (A-Z, 2-7): case-number safe, unambiguous.
    code = base64.b32encode(secrets.token_bytes(5)).decode()[:6]
    op.bulk_insert(table, [{"id": 1, "code": code}])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
    op.drop_table("instance")
