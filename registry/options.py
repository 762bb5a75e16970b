"""What a caller asks of a training run, as typed values: the hyper-parameters and where the adapters start.

Light on purpose (no torch): `from registry import TrainConfig, FromTask` stays cheap. Strings such as
`--init-from auto` exist only at the CLI's edge (`parse_init_from`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from registry.errors import OptionError


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run. Recorded as the run's `hyperparams`."""

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    adapter_size: int = 64
    max_length: int = 128
    warmup: float = 0.1
    seed: int = 0
    base_dropout: bool = False  # the frozen base's dropout while training: off, see docs/benchmarks.md (transfer)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scratch:
    """Fresh adapters (the default)."""

    def __str__(self) -> str:
        return "none"


@dataclass(frozen=True)
class Auto:
    """The start chosen on the new data in three steps: rank every earlier task by the similarity of its stored
    text embedding to the new data's (no forward pass per earlier task; tasks without one: LogME for a bounded
    few); give scratch and the `shortlist` most similar tasks a trial (the new head fitted on each start's frozen
    features, scored out of fold); keep scratch unless the best trial beats it in 95% of paired bootstrap resamples
    of the trial rows (the guard)."""

    shortlist: int = 3  # how many of the most similar earlier tasks get a trial

    def __str__(self) -> str:
        return "auto"


@dataclass(frozen=True)
class FromTask:
    """The adapters and LayerNorms of an earlier task's current version (the head is new; the task is only read)."""

    name: str

    def __str__(self) -> str:
        return self.name


InitFrom = Scratch | Auto | FromTask


def parse_init_from(text: str, shortlist: int | None = None) -> InitFrom:
    """`--init-from`'s value: `none`, `auto` (with `--shortlist`, when given), or a task's name."""
    if text == "auto":
        return Auto() if shortlist is None else Auto(shortlist=shortlist)
    if shortlist is not None:
        raise OptionError("--shortlist needs --init-from auto (only auto's ranking has a shortlist)")
    return Scratch() if text == "none" else FromTask(text)
