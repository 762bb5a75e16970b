"""The registry's tables as a typed SQLAlchemy 2 ORM. Migrations in migrations/ mirror this file."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, DateTime, Float, ForeignKey, Index, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TASK_STATUSES = ("training", "ready", "failed")
RUN_STATUSES = ("pending", "running", "succeeded", "failed", "interrupted")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Artifact(Base):
    """A file in the content-addressed store, named by the sha256 of its bytes."""

    __tablename__ = "artifacts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BaseCheckpoint(Base):
    """The frozen encoder every task is trained on; written once by `init`."""

    __tablename__ = "bases"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(1024))
    model_type: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))
    config_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))
    tokenizer_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))
    config: Mapped[dict[str, Any]]
    parameters: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Task(Base):
    """A named task; its row reserves the name while training and is listed once ready."""

    __tablename__ = "tasks"
    __table_args__ = (CheckConstraint(f"status IN {TASK_STATUSES}", name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    position: Mapped[int | None] = mapped_column(unique=True)
    base_id: Mapped[int] = mapped_column(ForeignKey("bases.id"))
    status: Mapped[str] = mapped_column(String(16))
    data_source: Mapped[str | None] = mapped_column(String(1024))
    task_type: Mapped[str | None] = mapped_column(String(16))
    metric: Mapped[str | None] = mapped_column(String(16))
    text_columns: Mapped[list[Any] | None]
    label_column: Mapped[str | None] = mapped_column(String(200))
    labels: Mapped[list[Any] | None]
    adapter_size: Mapped[int | None]
    adapter_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"))
    config_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"))
    score: Mapped[float | None] = mapped_column(Float)
    trainable_params: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ready_at: Mapped[datetime | None]

    runs: Mapped[list[Run]] = relationship(back_populates="task", order_by="Run.id")


class Run(Base):
    """One training run of a task (a sweep records one per grid point)."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(f"status IN {RUN_STATUSES}", name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    hyperparams: Mapped[dict[str, Any]]
    seed: Mapped[int]
    versions: Mapped[dict[str, Any]]
    device: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None]
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))
    validation_from: Mapped[str | None] = mapped_column(String(1024))
    trainable_params: Mapped[int | None] = mapped_column(BigInteger)
    score: Mapped[float | None] = mapped_column(Float)
    best_epoch: Mapped[int | None]
    adapter_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    task: Mapped[Task] = relationship(back_populates="runs")


class Evaluation(Base):
    """A stored task's score measured again later, with how many tasks the registry held then."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    adapter_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))
    tasks_present: Mapped[int]
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Metric(Base):
    """One measured value: a run's per-epoch loss or score, or an evaluation's score. Never updated."""

    __tablename__ = "metrics"
    __table_args__ = (
        CheckConstraint("(run_id IS NULL) <> (evaluation_id IS NULL)", name="one_source"),
        Index("ix_metrics_task_id_id", "task_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id"), index=True)
    key: Mapped[str] = mapped_column(String(32))
    split: Mapped[str] = mapped_column(String(16))
    epoch: Mapped[int | None]
    step: Mapped[int | None]
    value: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
