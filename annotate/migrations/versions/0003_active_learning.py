"""Schema version 3: label efficiency (issue 7): cached reply features, pair priorities of the
assignment strategy, and gold control pairs with each annotator's answers.

Written out here, not taken from annotate/store.py, so that it keeps describing version 3.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "response_features" not in existing:
        op.create_table(
            "response_features",
            sa.Column("response_id", sa.Integer(), sa.ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("featurizer", sa.String(200), primary_key=True),
            sa.Column("vector", sa.LargeBinary(), nullable=False),
        )
    if "pair_priorities" not in existing:
        op.create_table(
            "pair_priorities",
            sa.Column("comparison_id", sa.Integer(), sa.ForeignKey("comparisons.id", ondelete="CASCADE"),
                      primary_key=True),
            sa.Column("priority", sa.Float(), nullable=False),
            sa.Column("strategy", sa.String(32), nullable=False),
            sa.Column("refreshed_at", sa.DateTime(), nullable=False),
        )
    if "gold_pairs" not in existing:
        op.create_table(
            "gold_pairs",
            sa.Column("comparison_id", sa.Integer(), sa.ForeignKey("comparisons.id", ondelete="CASCADE"),
                      primary_key=True),
            sa.Column("answer", sa.String(8), nullable=False),
            sa.CheckConstraint("answer in ('A', 'B')", name="ck_gold_answer"),
        )
    if "gold_answers" not in existing:
        op.create_table(
            "gold_answers",
            sa.Column("comparison_id", sa.Integer(), sa.ForeignKey("comparisons.id", ondelete="CASCADE"),
                      primary_key=True),
            sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), primary_key=True),
            sa.Column("choice", sa.String(8), nullable=False),
            sa.Column("correct", sa.Boolean(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
        )
    op.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")


def downgrade() -> None:
    for table in ("gold_answers", "gold_pairs", "pair_priorities", "response_features"):
        op.drop_table(table)
    op.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
