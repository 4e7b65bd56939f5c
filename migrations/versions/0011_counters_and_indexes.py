"""counters kept by triggers, indexes for the hot reads (flat cost as the archive grows)

The queue page and ``/metrics`` read counts from ``counters`` + ``counter_deltas``
(:mod:`raddraft.counters`) instead of recounting reports, jobs, sends, events and versions per
request; the triggers below write one delta row per change, in the changing transaction. The
indexes serve the worklist's keyset page, the queue page's bounded lists and windows, and the
``raddraft studies`` page (see ``migrations/schema.py``, which declares them for the models).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 21:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The task-duration histogram's bounds (seconds) and their labels as /metrics prints them.
BUCKETS = (
    (0.1, "0.1"),
    (0.5, "0.5"),
    (1.0, "1"),
    (2.5, "2.5"),
    (5.0, "5"),
    (10.0, "10"),
    (30.0, "30"),
    (60.0, "60"),
    (120.0, "120"),
    (300.0, "300"),
    (600.0, "600"),
    (1800.0, "1800"),
)
TRIGGER_TABLES = ("reports", "jobs", "sent_objects", "ingest_events", "report_versions")

# (name, table, columns, partial-index condition or None)
INDEXES: tuple[tuple[str, str, tuple[str, ...], str | None], ...] = (  # schema.SCALE_INDEXES
    ("ix_reports_worklist", "reports", ("priority", "created_at", "id"), "state <> 'superseded'"),
    ("ix_reports_state_updated", "reports", ("state", "updated_at"), None),
    ("ix_report_versions_action_created", "report_versions", ("action", "created_at"), None),
    ("ix_ingest_events_kind_at", "ingest_events", ("kind", "at"), None),
    ("ix_jobs_state_finished", "jobs", ("state", "finished_at", "id"), None),
    ("ix_draft_runs_created_at", "draft_runs", ("created_at",), None),
    ("ix_draft_runs_demo", "draft_runs", ("study_version_pk",), "demo"),
    ("ix_sent_objects_state_id", "sent_objects", ("state", "id"), None),
    ("ix_audit_events_action_at", "audit_events", ("action", "at"), None),
    ("ix_audit_events_report_version", "audit_events", ("report_pk", "version"), None),
    ("ix_finding_feedback_at", "finding_feedback", ("at",), None),
    ("ix_studies_last_received", "studies", ("last_received_at", "id"), None),
)


# Retention's rule 6 looks drafts up by the prior they read (report_drafts.retention); an
# expression index, so not declared on the models (Alembic does not compare these).
PRIOR_INDEX = "ix_draft_runs_prior_uid"


def _prior_expression(bind: Connection) -> str:
    if bind.dialect.name == "postgresql":
        return "(prior ->> 'study_instance_uid')"
    return "json_extract(prior, '$.study_instance_uid')"


def _bucket_case(duration: str) -> str:
    whens = " ".join(f"WHEN {duration} <= {bound} THEN '{label}'" for bound, label in BUCKETS)
    return f"CASE {whens} ELSE '+Inf' END"


# -- PostgreSQL: one function per table ---------------------------------------------------------

_PG_DURATION = (
    "GREATEST(CASE WHEN json_typeof(NEW.timings -> 'run_s') = 'number' "
    "THEN (NEW.timings ->> 'run_s')::float8 "
    "WHEN NEW.started_at IS NOT NULL AND NEW.finished_at IS NOT NULL "
    "THEN extract(epoch FROM NEW.finished_at - NEW.started_at) END, 0)"
)

PG_FUNCTIONS = {
    "raddraft_count": """
CREATE OR REPLACE FUNCTION raddraft_count(n text, l text, d float8) RETURNS void AS $$
BEGIN
  IF d IS NOT NULL AND d <> 0 THEN
    INSERT INTO counter_deltas (name, labels, delta) VALUES (n, l, d);
  END IF;
END $$ LANGUAGE plpgsql""",
    "reports": """
CREATE OR REPLACE FUNCTION raddraft_count_reports() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.state = NEW.state THEN RETURN NULL; END IF;
  IF TG_OP <> 'INSERT' THEN PERFORM raddraft_count('reports', OLD.state, -1); END IF;
  IF TG_OP <> 'DELETE' THEN PERFORM raddraft_count('reports', NEW.state, 1); END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql""",
    "jobs": f"""
CREATE OR REPLACE FUNCTION raddraft_count_jobs() RETURNS trigger AS $$
DECLARE duration float8;
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.state = NEW.state AND OLD.queue = NEW.queue
     AND OLD.task = NEW.task THEN RETURN NULL; END IF;
  IF TG_OP <> 'INSERT' THEN
    PERFORM raddraft_count('jobs', OLD.queue || '|' || OLD.state || '|' || OLD.task, -1);
  END IF;
  IF TG_OP <> 'DELETE' THEN
    PERFORM raddraft_count('jobs', NEW.queue || '|' || NEW.state || '|' || NEW.task, 1);
    IF NEW.state = 'done' THEN
      duration := {_PG_DURATION};
      IF duration IS NOT NULL THEN
        PERFORM raddraft_count('job_duration',
                               NEW.task || '|' || {_bucket_case("duration")}, 1);
        PERFORM raddraft_count('job_duration_sum', NEW.task, duration);
      END IF;
    END IF;
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql""",
    "sent_objects": """
CREATE OR REPLACE FUNCTION raddraft_count_sent_objects() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'INSERT' OR TG_OP = 'DELETE'
     OR OLD.kind <> NEW.kind OR OLD.state <> NEW.state THEN
    IF TG_OP <> 'INSERT' THEN
      PERFORM raddraft_count('sent_objects', OLD.kind || '|' || OLD.state, -1);
    END IF;
    IF TG_OP <> 'DELETE' THEN
      PERFORM raddraft_count('sent_objects', NEW.kind || '|' || NEW.state, 1);
    END IF;
  END IF;
  IF TG_OP <> 'INSERT' THEN PERFORM raddraft_count('sent_attempts', OLD.kind, -OLD.attempts);
  END IF;
  IF TG_OP <> 'DELETE' THEN PERFORM raddraft_count('sent_attempts', NEW.kind, NEW.attempts);
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql""",
    "ingest_events": """
CREATE OR REPLACE FUNCTION raddraft_count_ingest_events() RETURNS trigger AS $$
BEGIN
  PERFORM raddraft_count('ingest_events', NEW.kind, 1);
  IF NEW.kind = 'stored' THEN PERFORM raddraft_count('ingest_bytes', '', NEW.size_bytes);
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql""",
    "report_versions": """
CREATE OR REPLACE FUNCTION raddraft_count_report_versions() RETURNS trigger AS $$
BEGIN
  PERFORM raddraft_count('report_versions', NEW.action, 1);
  IF NEW.action = 'sign' AND (NEW.diff ->> 'unchanged') = 'true' THEN
    PERFORM raddraft_count('signed_without_edit', '', 1);
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql""",
}

PG_TRIGGERS = {
    "reports": "AFTER INSERT OR DELETE OR UPDATE OF state",
    "jobs": "AFTER INSERT OR DELETE OR UPDATE OF state, queue, task",
    "sent_objects": "AFTER INSERT OR DELETE OR UPDATE OF state, kind, attempts",
    "ingest_events": "AFTER INSERT",
    "report_versions": "AFTER INSERT",
}


def _postgresql_up() -> None:
    for sql in PG_FUNCTIONS.values():
        op.execute(sql)
    for table, when in PG_TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {table}_count {when} ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION raddraft_count_{table}()"
        )


def _postgresql_down() -> None:
    for table in TRIGGER_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_count ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS raddraft_count_{table}()")
    op.execute("DROP FUNCTION IF EXISTS raddraft_count(text, text, float8)")


# -- SQLite: one trigger per table and event ----------------------------------------------------

_SQLITE_DURATION = (
    "max(CASE WHEN json_type(NEW.timings, '$.run_s') IN ('integer', 'real') "
    "THEN json_extract(NEW.timings, '$.run_s') "
    "WHEN NEW.started_at IS NOT NULL AND NEW.finished_at IS NOT NULL "
    "THEN (julianday(NEW.finished_at) - julianday(NEW.started_at)) * 86400.0 END, 0)"
)
_INTO = "INSERT INTO counter_deltas (name, labels, delta)"
_JOB_OLD = "OLD.queue || '|' || OLD.state || '|' || OLD.task"
_JOB_NEW = "NEW.queue || '|' || NEW.state || '|' || NEW.task"
_JOB_DONE = f"""
  {_INTO} SELECT 'job_duration', NEW.task || '|' || {_bucket_case("d")}, 1
    FROM (SELECT {_SQLITE_DURATION} AS d) WHERE NEW.state = 'done' AND d IS NOT NULL;
  {_INTO} SELECT 'job_duration_sum', NEW.task, d
    FROM (SELECT {_SQLITE_DURATION} AS d) WHERE NEW.state = 'done' AND d IS NOT NULL AND d <> 0;
"""
_SENT_CHANGED = "OLD.kind IS NOT NEW.kind OR OLD.state IS NOT NEW.state"

SQLITE_TRIGGERS = {
    "reports_count_insert": f"AFTER INSERT ON reports BEGIN {_INTO} VALUES "
    "('reports', NEW.state, 1); END",
    "reports_count_update": "AFTER UPDATE OF state ON reports WHEN OLD.state IS NOT NEW.state "
    f"BEGIN {_INTO} VALUES ('reports', OLD.state, -1), ('reports', NEW.state, 1); END",
    "reports_count_delete": f"AFTER DELETE ON reports BEGIN {_INTO} VALUES "
    "('reports', OLD.state, -1); END",
    "jobs_count_insert": f"AFTER INSERT ON jobs BEGIN {_INTO} VALUES ('jobs', {_JOB_NEW}, 1); "
    f"{_JOB_DONE} END",
    "jobs_count_update": "AFTER UPDATE OF state, queue, task ON jobs WHEN "
    "OLD.state IS NOT NEW.state OR OLD.queue IS NOT NEW.queue OR OLD.task IS NOT NEW.task "
    f"BEGIN {_INTO} VALUES ('jobs', {_JOB_OLD}, -1), ('jobs', {_JOB_NEW}, 1); {_JOB_DONE} END",
    "jobs_count_delete": f"AFTER DELETE ON jobs BEGIN {_INTO} VALUES ('jobs', {_JOB_OLD}, -1); END",
    "sent_objects_count_insert": f"AFTER INSERT ON sent_objects BEGIN {_INTO} VALUES "
    "('sent_objects', NEW.kind || '|' || NEW.state, 1); "
    f"{_INTO} SELECT 'sent_attempts', NEW.kind, NEW.attempts WHERE NEW.attempts <> 0; END",
    "sent_objects_count_update": "AFTER UPDATE OF state, kind, attempts ON sent_objects BEGIN "
    f"{_INTO} SELECT 'sent_objects', OLD.kind || '|' || OLD.state, -1 WHERE {_SENT_CHANGED}; "
    f"{_INTO} SELECT 'sent_objects', NEW.kind || '|' || NEW.state, 1 WHERE {_SENT_CHANGED}; "
    f"{_INTO} SELECT 'sent_attempts', OLD.kind, -OLD.attempts WHERE OLD.attempts <> 0; "
    f"{_INTO} SELECT 'sent_attempts', NEW.kind, NEW.attempts WHERE NEW.attempts <> 0; END",
    "sent_objects_count_delete": f"AFTER DELETE ON sent_objects BEGIN {_INTO} VALUES "
    "('sent_objects', OLD.kind || '|' || OLD.state, -1); "
    f"{_INTO} SELECT 'sent_attempts', OLD.kind, -OLD.attempts WHERE OLD.attempts <> 0; END",
    "ingest_events_count_insert": f"AFTER INSERT ON ingest_events BEGIN {_INTO} VALUES "
    "('ingest_events', NEW.kind, 1); "
    f"{_INTO} SELECT 'ingest_bytes', '', NEW.size_bytes "
    "WHERE NEW.kind = 'stored' AND NEW.size_bytes <> 0; END",
    "report_versions_count_insert": f"AFTER INSERT ON report_versions BEGIN {_INTO} VALUES "
    "('report_versions', NEW.action, 1); "
    f"{_INTO} SELECT 'signed_without_edit', '', 1 WHERE NEW.action = 'sign' "
    "AND json_extract(NEW.diff, '$.unchanged') IN (1, 'true'); END",
}


def _sqlite_up() -> None:
    for name, body in SQLITE_TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def _sqlite_down() -> None:
    for name in SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")


# -- the totals from the rows (what the triggers would have counted) ----------------------------

REBUILD = (
    "SELECT 'reports', state, count(*) FROM reports GROUP BY state",
    "SELECT 'jobs', queue || '|' || state || '|' || task, count(*) FROM jobs "
    "GROUP BY queue, state, task",
    "SELECT 'sent_objects', kind || '|' || state, count(*) FROM sent_objects GROUP BY kind, state",
    "SELECT 'sent_attempts', kind, sum(attempts) FROM sent_objects GROUP BY kind",
    "SELECT 'ingest_events', kind, count(*) FROM ingest_events GROUP BY kind",
    "SELECT 'ingest_bytes', '', sum(size_bytes) FROM ingest_events WHERE kind = 'stored'",
    "SELECT 'report_versions', action, count(*) FROM report_versions GROUP BY action",
)


def _durations(bind: Connection) -> list[tuple[str, str, float]]:
    """Finished jobs' histogram rows, computed as the triggers do."""
    if bind.dialect.name == "postgresql":
        duration = _PG_DURATION.replace("NEW.", "")
        unchanged = "(diff ->> 'unchanged') = 'true'"
    else:
        duration = _SQLITE_DURATION.replace("NEW.", "")
        unchanged = "json_extract(diff, '$.unchanged') IN (1, 'true')"
    rows = bind.execute(
        sa.text(
            f"SELECT task, {_bucket_case('d')}, count(*), sum(d) FROM "
            f"(SELECT task, {duration} AS d FROM jobs WHERE state = 'done') AS t "
            "WHERE d IS NOT NULL GROUP BY 1, 2"
        )
    ).all()
    found: list[tuple[str, str, float]] = []
    sums: dict[str, float] = {}
    for task, bucket, count, total in rows:
        found.append(("job_duration", f"{task}|{bucket}", float(count)))
        sums[task] = sums.get(task, 0.0) + float(total or 0)
    found += [("job_duration_sum", task, total) for task, total in sums.items()]
    signed = bind.execute(
        sa.text(f"SELECT count(*) FROM report_versions WHERE action = 'sign' AND {unchanged}")
    ).scalar()
    found.append(("signed_without_edit", "", float(signed or 0)))
    return found


def rebuild_counters(bind: Connection) -> None:
    """Count every figure from the rows again (the migration, and a bulk load that went
    around the triggers)."""
    bind.execute(sa.text("DELETE FROM counter_deltas"))
    bind.execute(sa.text("DELETE FROM counters"))
    rows: list[tuple[str, str, float]] = []
    for sql in REBUILD:
        rows += [(n, str(labels), float(v or 0)) for n, labels, v in bind.execute(sa.text(sql))]
    rows += _durations(bind)
    values = [{"n": n, "l": labels, "v": v} for n, labels, v in rows if v]
    if values:
        bind.execute(
            sa.text("INSERT INTO counters (name, labels, value) VALUES (:n, :l, :v)"), values
        )


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.String(length=400), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", "labels", name=op.f("pk_counters")),
    )
    op.create_table(
        "counter_deltas",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.String(length=400), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_counter_deltas")),
    )
    for name, table, columns, where in INDEXES:
        condition = {} if where is None else {"postgresql_where": sa.text(where)}
        if where is not None:
            condition["sqlite_where"] = sa.text(where)
        op.create_index(name, table, list(columns), **condition)
    bind = op.get_bind()
    op.execute(f"CREATE INDEX {PRIOR_INDEX} ON draft_runs ({_prior_expression(bind)})")
    if bind.dialect.name == "postgresql":
        _postgresql_up()
    else:
        _sqlite_up()
    rebuild_counters(bind)


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {PRIOR_INDEX}")
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_down()
    else:
        _sqlite_down()
    for name, table, _columns, _where in INDEXES:
        op.drop_index(name, table_name=table)
    op.drop_table("counter_deltas")
    op.drop_table("counters")
