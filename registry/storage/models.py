"""ORM classes for the commands that write, mapped onto the tables of registry.schema.

Each class has one attribute per column of its table, with the column's name.
"""

from sqlalchemy.orm import DeclarativeBase, relationship

from registry.storage import schema


class Base(DeclarativeBase):
    metadata = schema.metadata


class Artifact(Base):
    """A file in the content-addressed store, named by the sha256 of its bytes."""

    __table__ = schema.artifacts


class BaseCheckpoint(Base):
    """The frozen encoder every task is trained on; written once by `init`."""

    __table__ = schema.bases


class Task(Base):
    """A named task; its row reserves the name while training and is listed once ready."""

    __table__ = schema.tasks

    runs = relationship("Run", order_by="Run.id", foreign_keys="Run.task_id")


class Run(Base):
    """One training run of a task (a sweep records one per grid point)."""

    __table__ = schema.runs


class Evaluation(Base):
    """A stored task's score measured again later, with how many tasks the registry held then."""

    __table__ = schema.evaluations


class Metric(Base):
    """One measured value: a run's per-epoch loss or score, or an evaluation's score. Never updated."""

    __table__ = schema.metrics


class TaskVersion(Base):
    """One published version of a task: its own adapter, config and validation score."""

    __table__ = schema.task_versions
