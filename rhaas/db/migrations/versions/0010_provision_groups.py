"""provision groups: the deploys one fleet-sized request started share a group id

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 13:45:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("provision_job") as batch:
        batch.add_column(sa.Column("group_uuid", sa.String(length=36), nullable=True))
        batch.create_index("ix_provision_job_group_uuid", ["group_uuid"])


def downgrade() -> None:
    with op.batch_alter_table("provision_job") as batch:
        batch.drop_index("ix_provision_job_group_uuid")
        batch.drop_column("group_uuid")
