"""chunk store: whole-disk images as content-addressed chunks in the database, with no kernel or initrd

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 01:43:38.162026
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "chunk",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_chunk")),
    )
    op.create_table(
        "chunk_upload",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sha256"], ["chunk.sha256"], name=op.f("fk_chunk_upload_sha256_chunk"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name=op.f("fk_chunk_upload_user_id_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("sha256", "user_id", name=op.f("pk_chunk_upload")),
    )
    op.create_table(
        "disk_manifest",
        sa.Column("image_id", Id, nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("virtual_size", sa.BigInteger(), nullable=False),
        sa.Column("logical_sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_disk_manifest_image_id_image"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_disk_manifest")),
    )
    op.create_table(
        "image_extent",
        sa.Column("image_id", Id, nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("chunk_sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["chunk_sha256"], ["chunk.sha256"], name=op.f("fk_image_extent_chunk_sha256_chunk")
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_image_extent_image_id_image"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("image_id", "start", name=op.f("pk_image_extent")),
    )
    with op.batch_alter_table("image_extent") as batch:
        batch.create_index(batch.f("ix_image_extent_chunk_sha256"), ["chunk_sha256"], unique=False)
    # A whole-disk image needs no kernel or initrd.
    with op.batch_alter_table("image") as batch:
        batch.alter_column("kernel_sha256", existing_type=sa.String(length=64), nullable=True)
        batch.alter_column("initrd_sha256", existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    # The old schema cannot hold whole-disk images: they go, and the jobs that deployed them forget them
    # (as deleting an image does).
    chunked = "SELECT image_id FROM disk_manifest"
    op.execute(f"UPDATE provision_job SET image_id = NULL WHERE image_id IN ({chunked})")
    op.execute("DELETE FROM image_extent")
    op.execute(f"DELETE FROM image WHERE id IN ({chunked})")
    with op.batch_alter_table("image") as batch:
        batch.alter_column("initrd_sha256", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("kernel_sha256", existing_type=sa.String(length=64), nullable=False)
    with op.batch_alter_table("image_extent") as batch:
        batch.drop_index(batch.f("ix_image_extent_chunk_sha256"))
    op.drop_table("image_extent")
    op.drop_table("disk_manifest")
    op.drop_table("chunk_upload")
    op.drop_table("chunk")
