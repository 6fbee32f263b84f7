"""provisioning network and network boot: who holds a node's NIC, and a pending FPBL boot

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 22:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("node_provisioning") as batch:
        batch.add_column(sa.Column("vlan", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("nic", sa.String(length=255), nullable=True))
        for flag in ("port_dirty", "boot_pending"):
            batch.add_column(sa.Column(flag, sa.Boolean(), server_default=sa.text("false"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("node_provisioning") as batch:
        batch.drop_column("boot_pending")
        batch.drop_column("port_dirty")
        batch.drop_column("nic")
        batch.drop_column("vlan")
