"""Schema version 1, the baseline: the tables as rewardlab first shipped them.

Written out here, not taken from annotate/store.py, so that it keeps describing version 1 when the
models move on. Databases made before migrations existed are at this version already: ``rewardlab
db upgrade`` finds ``schema_version = 1`` in ``meta`` and records this revision without running it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(300), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("role in ('annotator', 'admin')", name="ck_role"),
    )
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("messages", sa.Text(), nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("meta", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "responses",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("prompt_id", sa.Integer(), sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model", sa.String(500), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("prompt_id", "model", "text_hash", name="uq_response"),
    )
    op.create_index("ix_responses_prompt_id", "responses", ["prompt_id"])
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("prompt_id", sa.Integer(), sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("response_a_id", sa.Integer(), sa.ForeignKey("responses.id", ondelete="CASCADE"), nullable=False),
        sa.Column("response_b_id", sa.Integer(), sa.ForeignKey("responses.id", ondelete="CASCADE"), nullable=False),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("label_count", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("response_a_id", "response_b_id", name="uq_comparison"),
        sa.CheckConstraint("response_a_id < response_b_id", name="ck_canonical"),
        sa.CheckConstraint("label_count <= overlap", name="ck_overlap"),
    )
    op.create_index("ix_comparisons_prompt_id", "comparisons", ["prompt_id"])
    op.create_index("ix_comparisons_open", "comparisons", ["label_count", "overlap"])
    op.create_index(
        "ix_comparisons_next", "comparisons", [sa.text("label_count DESC"), "id"],
        sqlite_where=sa.text("label_count < overlap"), postgresql_where=sa.text("label_count < overlap"),
    )
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("comparison_id", sa.Integer(), sa.ForeignKey("comparisons.id", ondelete="CASCADE"), nullable=False),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=False),
        sa.Column("choice", sa.String(8), nullable=False),
        sa.Column("strength", sa.String(8), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("comparison_id", "annotator_id", name="uq_label"),
        sa.CheckConstraint("choice in ('A', 'B', 'tie', 'both_bad')", name="ck_choice"),
        sa.CheckConstraint("strength is null or strength in ('slight', 'clear')", name="ck_strength"),
    )
    op.create_index("ix_labels_annotator_id", "labels", ["annotator_id"])
    op.create_table(
        "assignments",
        sa.Column("comparison_id", sa.Integer(), sa.ForeignKey("comparisons.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), primary_key=True),
        sa.Column("swapped", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("shown_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_assignments_annotator", "assignments", ["annotator_id", "status"])
    op.create_index("ix_assignments_open", "assignments", ["comparison_id", "status", "expires_at"])
    op.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")


def downgrade() -> None:
    for table in ("assignments", "labels", "comparisons", "responses", "prompts", "annotators", "meta"):
        op.drop_table(table)
