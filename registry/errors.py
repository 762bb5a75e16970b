"""Errors a user can act on. Every message is one line that says what to do next."""


def printable(text: str) -> str:
    """`text` with control characters, escape sequences and other unprintable characters escaped: one safe line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class RegistryError(Exception):
    """Base class: the CLI prints the message on one line and exits 1."""


class NotInitialised(RegistryError):
    """No registry at the resolved location."""


class AlreadyInitialised(RegistryError):
    """`init` on a registry that already has a base."""


class SchemaMismatch(RegistryError):
    """The database schema revision differs from the one this code expects."""


class NotARegistry(RegistryError):
    """The database exists but is not a registry database."""


class DatabaseUnavailable(RegistryError):
    """The database cannot be opened or reached."""


class BaseModelError(RegistryError):
    """The base checkpoint cannot be loaded or is not supported."""


class InvalidName(RegistryError):
    """A task name outside `[a-z0-9][a-z0-9_.-]*`."""


class TaskExists(RegistryError):
    """A task of that name is already ready or training."""


class UnknownTask(RegistryError):
    """No ready task of that name."""


class DataError(RegistryError):
    """The training or evaluation data cannot be used as given."""


class NoMatchingModules(RegistryError):
    """Adapter injection found no module to wrap in the model."""


class ArtifactError(RegistryError):
    """An artifact is missing or its bytes do not match its sha256."""


class StoreUnavailable(RegistryError):
    """The artifact store kept failing (network, server) after a bounded number of attempts."""


class BundleError(RegistryError):
    """A bundle is missing files, tampered with, or built on another base."""


class VersionError(RegistryError):
    """A version the task does not have, one already current, or a new version that does not fit the task."""


class RetireError(RegistryError):
    """`retire` of a retired task, or `restore` of one that is not retired."""


class OptionError(RegistryError):
    """Options that cannot go together, such as `promote` without `new_version` (the CLI: a usage error, exit 2)."""


class TrainingError(RegistryError):
    """Hyper-parameters no run can use, or a run that diverged."""


class NonFiniteOutput(RegistryError):
    """A task (or base) gave NaN or infinite outputs: never returned as an answer.

    `tasks` names the tasks that did; `predictions` holds every other input's answer (None for theirs).
    """

    def __init__(self, message: str, tasks: frozenset[str] = frozenset(), predictions: list | None = None) -> None:
        super().__init__(message)
        self.tasks, self.predictions = tasks, predictions or []


class ServeError(RegistryError):
    """A server cannot start (e.g. its address cannot be listened on)."""
