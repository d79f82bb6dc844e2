"""Job kinds and owners: recompute jobs, and the token that ordered each job.

- `kind` ('basis' | 'recompute'): every job so far computed a basis, so the rows already there
  become 'basis'. NOT NULL with no server default (the models' defaults are Python-side), so the
  column is added nullable, filled, then tightened;
- `basis_id` becomes nullable: a recompute job has no basis of its own;
- `params` (a recompute job's request) and `result` (what it queued and skipped), JSON, NULL for
  basis jobs;
- `token_id` -> tokens.id, indexed (pending jobs are counted per token): NULL for the jobs made
  before this revision, which count against no token.

On SQLite each `batch_alter_table` block copies the table (SQLite cannot alter a column's
nullability); on PostgreSQL it issues plain ALTERs. The downgrade deletes recompute jobs (the
0.1.0 schema cannot hold them), then restores the 0001 table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("token_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("params", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("result", sa.JSON(), nullable=True))
        batch.alter_column("basis_id", existing_type=sa.Integer(), nullable=True)
    op.execute(sa.text("UPDATE jobs SET kind = 'basis'"))
    # The foreign key stays unnamed, as create_all() leaves it. SQLite's batch mode adds only
    # named constraints, so there it comes with the column's definition in the second copy;
    # PostgreSQL gets the name it would give an unnamed one.
    fk_column = sa.Column("token_id", sa.Integer(), sa.ForeignKey("tokens.id"), nullable=True)
    with op.batch_alter_table("jobs", reflect_args=[fk_column] if sqlite else ()) as batch:
        batch.alter_column("kind", existing_type=sa.String(length=16), nullable=False)
        batch.create_index("ix_jobs_token_id", ["token_id"], unique=False)
    if not sqlite:
        op.create_foreign_key("jobs_token_id_fkey", "jobs", "tokens", ["token_id"], ["id"])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM jobs WHERE basis_id IS NULL"))
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("jobs") as batch:
        if not sqlite:  # SQLite's copy of the table leaves it out with its column
            batch.drop_constraint("jobs_token_id_fkey", type_="foreignkey")
        batch.drop_index("ix_jobs_token_id")
        batch.alter_column("basis_id", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("result")
        batch.drop_column("params")
        batch.drop_column("token_id")
        batch.drop_column("kind")
