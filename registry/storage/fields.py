"""One validator at the door for every text a registry stores and a bundle carries: what `init`, `add-task` and
`import` accept, `export` writes and `import` reads back, on SQLite and PostgreSQL alike.

A field is text of printable characters (no control characters, escapes or non-breaking spaces: a line that
shows what it holds) of at most its length: the column's length in registry.storage.schema (SQLite would store longer
text, PostgreSQL refuses it), or for the names inside JSON columns (text columns, labels) the label column's.
"""

from __future__ import annotations

from collections.abc import Iterable

from registry.errors import printable
from registry.storage import schema

LIMITS = {
    "base name": schema.bases.c.name.type.length,
    "base source": schema.bases.c.source.type.length,
    "data source": schema.tasks.c.data_source.type.length,
    "validation source": schema.runs.c.validation_from.type.length,
    "label column": schema.tasks.c.label_column.type.length,
    "text column": schema.tasks.c.label_column.type.length,
    "label": schema.tasks.c.label_column.type.length,
}


def problem(value: object, what: str) -> str | None:
    """What keeps `value` from being stored and read back as the `what` field, or None."""
    if not isinstance(value, str):
        return f"the {what} is not text"
    if len(value) > LIMITS[what]:
        return f"the {what} '{printable(value[:40])}…' is {len(value)} characters long, over {LIMITS[what]}"
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        return f"the {what} '{printable(value)[:80]}' holds the non-printable character U+{ord(bad):04X}"
    return None


def clip(value: str, what: str) -> str:
    """A descriptive field (not one a bundle carries) cut to its column's length."""
    return value if len(value) <= LIMITS[what] else value[:LIMITS[what] - 1] + "…"


def first_problem(values: Iterable[tuple[object, str]]) -> str | None:
    """The first problem of (value, field) pairs, or None."""
    return next((found for value, what in values if (found := problem(value, what))), None)


def task_problem(data_source: object, label_column: object, text_columns: Iterable, labels: Iterable | None) -> \
        str | None:
    """The first problem of a task's stored text fields, or None."""
    return first_problem([(data_source, "data source"), (label_column, "label column"),
                          *((column, "text column") for column in text_columns),
                          *((label, "label") for label in labels or ())])
