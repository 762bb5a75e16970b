"""The registry's tables in SQLAlchemy Core: the one definition of the schema.

Migrations in migrations/ mirror it (tests/test_db.py checks there is no drift), registry.models maps
ORM classes onto it for the commands that write, and the read commands (`list`, `show`, `history`)
query it directly, so they never import the ORM.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TASK_STATUSES = ("training", "ready", "failed")
RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")  # "pending" (never used) dropped in 0005
EVENT_ACTIONS = ("publish", "promote", "retire", "restore")

metadata = MetaData(naming_convention=NAMING)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def artifact_ref(name: str, *, nullable: bool = False) -> Column:
    """A column holding the sha256 of a stored artifact."""
    return Column(name, String(64), ForeignKey("artifacts.sha256"), nullable=nullable)


def moment(name: str, *, nullable: bool = False) -> Column:
    """A timezone-aware timestamp; set to now on insert unless it may stay empty."""
    return Column(name, DateTime(timezone=True), nullable=nullable, default=None if nullable else utcnow)


# A file in the content-addressed store, named by the sha256 of its bytes.
artifacts = Table(
    "artifacts", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    moment("created_at"),
)

# The frozen encoder every task is trained on; written once by `init`.
bases = Table(
    "bases", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("source", String(1024), nullable=False),
    Column("model_type", String(64), nullable=False),
    artifact_ref("sha256"),
    artifact_ref("config_sha256"),
    artifact_ref("tokenizer_sha256"),
    Column("config", JSON, nullable=False),
    Column("parameters", BigInteger, nullable=False),
    moment("created_at"),
    Column("registry_id", String(32)),  # what the store's marker names (revision 0004; see registry.ownership)
)

# A named task; its row reserves the name while training and is listed once ready. Its adapter, config, size,
# score and parameters are those of its current version (task_versions); current_version and retired_at are the
# current state, a cache of task_events updated in the transaction that appends the event.
tasks = Table(
    "tasks", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("position", Integer, unique=True),
    Column("base_id", Integer, ForeignKey("bases.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("data_source", String(1024)),
    Column("task_type", String(16)),
    Column("metric", String(16)),
    Column("text_columns", JSON),
    Column("label_column", String(200)),
    Column("labels", JSON),
    Column("adapter_size", Integer),
    artifact_ref("adapter_sha256", nullable=True),
    artifact_ref("config_sha256", nullable=True),
    Column("score", Float),
    Column("trainable_params", BigInteger),
    moment("created_at"),
    moment("ready_at", nullable=True),
    Column("current_version", Integer),
    moment("retired_at", nullable=True),
    CheckConstraint(f"status IN {TASK_STATUSES}", name="status"),
)

# One training run of a task (a sweep records one per grid point, --compare-scratch one more from scratch).
runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("hyperparams", JSON, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("versions", JSON, nullable=False),
    Column("device", String(64)),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("data_fingerprint", String(64)),
    Column("validation_from", String(1024)),
    Column("trainable_params", BigInteger),
    Column("score", Float),
    Column("best_epoch", Integer),
    artifact_ref("adapter_sha256", nullable=True),
    Column("error", Text),
    moment("started_at"),
    moment("heartbeat_at"),
    moment("finished_at", nullable=True),
    # Where the run's adapters started (revision 0003): an earlier task's version and its adapter bytes, or
    # nothing (from scratch); `selection` holds how `--init-from` chose it (auto's trial losses).
    Column("init_task_id", Integer, ForeignKey("tasks.id")),
    Column("init_version", Integer),
    artifact_ref("init_adapter_sha256", nullable=True),
    Column("selection", JSON),
    CheckConstraint(f"status IN {RUN_STATUSES}", name="status"),
)

# One published version of a task: its own adapter, config and validation score, and why it was or was not made
# current when published. Never updated: pointer moves are in task_events.
task_versions = Table(
    "task_versions", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("run_id", Integer, ForeignKey("runs.id")),
    Column("data_source", String(1024)),
    Column("data_fingerprint", String(64)),
    Column("adapter_size", Integer, nullable=False),
    artifact_ref("adapter_sha256"),
    artifact_ref("config_sha256"),
    Column("score", Float, nullable=False),
    Column("trainable_params", BigInteger),
    moment("created_at"),
    Column("why", Text),
    # the version's text embedding (registry.training.embedding; revision 0005): empty before 0005 and when imported
    artifact_ref("embedding_sha256", nullable=True),
    UniqueConstraint("task_id", "version"),
)

# Who moved a task's pointer, when and why: a version made current when published or by `promote` (`version`
# set), or the task retired or restored. Appended in the transaction that moves the pointer; never updated.
task_events = Table(
    "task_events", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False, index=True),
    Column("version", Integer),
    Column("action", String(16), nullable=False),
    moment("at"),
    Column("by", String(255), nullable=False),
    Column("why", Text),
    CheckConstraint(f"action IN {EVENT_ACTIONS}", name="action"),
)

# A stored task's score measured again later, with how many tasks the registry held then.
evaluations = Table(
    "evaluations", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False, index=True),
    artifact_ref("adapter_sha256"),
    Column("tasks_present", Integer, nullable=False),
    Column("data_fingerprint", String(64)),
    Column("score", Float, nullable=False),
    moment("created_at"),
    Column("version", Integer),
)

# One measured value: a run's per-epoch loss or score, or an evaluation's score. Never updated.
metrics = Table(
    "metrics", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False),
    Column("run_id", Integer, ForeignKey("runs.id"), index=True),
    Column("evaluation_id", Integer, ForeignKey("evaluations.id"), index=True),
    Column("key", String(32), nullable=False),
    Column("split", String(16), nullable=False),
    Column("epoch", Integer),
    Column("step", Integer),
    Column("value", Float, nullable=False),
    moment("recorded_at"),
    CheckConstraint("(run_id IS NULL) <> (evaluation_id IS NULL)", name="one_source"),
    Index("ix_metrics_task_id_id", "task_id", "id"),
)
