"""first-boot seed of a deploy (cloud-init data, boot overrides); a return's wipe policy; zeroed disks

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 02:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("provision_job") as batch:
        batch.add_column(sa.Column("seed", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("wipe_policy", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("disk_zeroed", sa.Boolean(), nullable=True))
    with op.batch_alter_table("node_provisioning") as batch:
        batch.add_column(
            sa.Column("disk_zeroed", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("node_provisioning") as batch:
        batch.drop_column("disk_zeroed")
    with op.batch_alter_table("provision_job") as batch:
        batch.drop_column("disk_zeroed")
        batch.drop_column("wipe_policy")
        batch.drop_column("seed")
