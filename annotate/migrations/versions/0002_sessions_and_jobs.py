"""Schema version 2: sign-in sessions and failures kept in the database (so every app process sees
the same ones), and the admin console's background jobs.

Written out here, not taken from annotate/store.py, so that it keeps describing version 2.
Builds of rewardlab between these tables and migrations added them to version-1 databases on
start; such a table is kept as it is.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "web_sessions" not in existing:
        _web_sessions()
    if "login_failures" not in existing:
        _login_failures()
    if "jobs" not in existing:
        _jobs()
    op.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def _web_sessions() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_web_sessions_annotator_id", "web_sessions", ["annotator_id"])
    op.create_index("ix_web_sessions_last_seen", "web_sessions", ["last_seen"])


def _login_failures() -> None:
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_login_failures_at", "login_failures", ["at"])
    op.create_index("ix_login_failures_key_at", "login_failures", ["key", "at"])


def _jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("proc_start", sa.Float(), nullable=True),
        sa.Column("folder", sa.Text(), nullable=False),
        sa.Column("out", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.CheckConstraint("status in ('running', 'succeeded', 'failed', 'cancelled', 'lost')", name="ck_job_status"),
    )
    op.create_index("ix_jobs_kind", "jobs", ["kind", "id"])


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("login_failures")
    op.drop_table("web_sessions")
    op.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
