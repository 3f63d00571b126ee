"""An Alembic migration that creates the outbox table: versions/0002_outbox.py.

It is what ``alembic revision --autogenerate`` writes once ``outbox_table(Base.metadata)``
is in your models' metadata.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_outbox"
down_revision = "0001_initial"


# --8<-- [start:upgrade]
def upgrade() -> None:
    op.create_table(
        "uow_outbox",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("kwargs", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
    )
    unpublished = sa.text("published_at IS NULL")
    op.create_index(
        "ix_uow_outbox_unpublished",
        "uow_outbox",
        ["created_at"],
        postgresql_where=unpublished,
        sqlite_where=unpublished,
    )
    op.create_index("ix_uow_outbox_published_at", "uow_outbox", ["published_at"])
    # the consumer's side, in the consumer's database: handled_table(metadata)
    op.create_table(
        "uow_handled",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("handled_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("uow_handled")
    op.drop_table("uow_outbox")


# --8<-- [end:upgrade]
