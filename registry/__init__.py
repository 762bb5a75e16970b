"""adapter-registry: one frozen base, one adapter per task, every run and score in SQL.

    from registry import Registry, TrainConfig
    r = Registry.open()          # or Registry.create("reg", base=...)

Names load on first use (a lazy module `__getattr__`, as PEFT does): `import registry` imports neither
torch, transformers nor fsspec, and neither does listing a registry's tasks.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "registry.api": ("Registry", "Bundle", "Exported"),
    "registry.options": ("TrainConfig", "Scratch", "Auto", "FromTask", "InitFrom"),
    "registry.results": ("Base", "Task", "TaskVersion", "TaskDetail", "Version", "Event", "Run", "StartPoint", "Score",
                         "Matrix", "Promotion", "Retirement", "Restoration", "Evaluation", "VerifyReport", "Problem",
                         "RunSummary", "Imported", "SchemaRevision", "Rows"),
    "registry.serving.predictor": ("Predictor", "Prediction"),
    "registry.errors": ("RegistryError", "NotInitialised", "AlreadyInitialised", "SchemaMismatch", "NotARegistry",
                        "DatabaseUnavailable", "BaseModelError", "InvalidName", "TaskExists", "UnknownTask",
                        "DataError", "NoMatchingModules", "ArtifactError", "StoreUnavailable", "BundleError",
                        "VersionError", "RetireError", "OptionError", "TrainingError", "ServeError"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME_OF)


def __getattr__(name: str):
    """Import the module that defines `name` on first use."""
    if name not in _HOME_OF:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
