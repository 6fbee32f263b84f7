"""return token of a deploy: the one credential the customer's OS can read, good for one return check-in

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 22:50:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("node_provisioning") as batch:
        batch.add_column(sa.Column("return_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("node_provisioning") as batch:
        batch.drop_column("return_sha256")
