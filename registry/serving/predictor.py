"""Many tasks on one frozen base: the model that routes each example through its own task's adapters.

`FrozenBase` loads a base checkpoint once; every `Predictor` built on it shares its weights and
injects its own stack of task adapters into a copy of its modules, so a server can build the next
set of tasks while the current one keeps answering. Prediction tokenises through
`encoding.tokenise`, truncating exactly as training did. Requests from the command line
(`registry predict`) are read here too; `registry.serving.live` says where tasks come from.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from registry.model import checkpoint, probe
from registry.model.adapters import AdapterModel
from registry.data.encoding import PASS_COST_TOKENS, Encoded, batches, tokenise
from registry.errors import DataError, NonFiniteOutput, UnknownTask
from registry.formats import head_size, pick_device

# What `GET /v1/tasks` and a bundle's manifest say about each task.
ABOUT_FIELDS = ("name", "position", "task_type", "labels", "metric", "score", "adapter_sha256")


@dataclass(frozen=True)
class TaskSpec:
    """One task as the predictor needs it, read from the task's config artifact."""

    name: str
    task_type: str
    labels: tuple[str, ...] | None
    text_columns: tuple[str, ...]
    adapter_size: int
    max_length: int
    base_sha256: str

    @classmethod
    def from_config(cls, name: str, config: dict) -> TaskSpec:
        """The spec of task `name` from its JSON config artifact (see tasks.adapter_files)."""
        labels = config.get("labels")
        return cls(name=name, task_type=config["task_type"], labels=tuple(labels) if labels is not None else None,
                   text_columns=tuple(config["text_columns"]), adapter_size=int(config["adapter_size"]),
                   max_length=int(config["max_length"]), base_sha256=config["base_sha256"])

    @property
    def head_size(self) -> int:
        """Outputs of the head: one per class, or one for regression."""
        return head_size(self.task_type, self.labels)

    @property
    def pair(self) -> bool:
        """Whether the task reads a text pair."""
        return len(self.text_columns) == 2


@dataclass(frozen=True)
class Prediction:
    """One example's prediction: the original label string (or the value, for regression) and its probability."""

    task: str
    label: str | float
    score: float | None
    probabilities: dict[str, float] | None

    def as_dict(self) -> dict:
        return asdict(self)


# Where a window's time goes on the model thread (Tally.seconds): tokenising; sorting, cutting and padding the passes;
# the encoder's forward passes, split between real tokens and padding in proportion to their token slots; the heads,
# softmax and answers.
MODEL_STAGES = ("tokenise", "batch", "forward", "padding", "output")


class Laps:
    """A stopwatch by stage: `lap(stage)` adds the seconds since the previous lap (or the start) to `seconds[stage]`."""

    __slots__ = ("mark", "seconds")

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds = seconds if seconds is not None else {}
        self.mark = time.perf_counter()

    def lap(self, stage: str) -> float:
        """The seconds since the previous lap, added to `stage`."""
        now = time.perf_counter()
        spent, self.mark = now - self.mark, now
        self.seconds[stage] = self.seconds.get(stage, 0.0) + spent
        return spent


@dataclass
class Tally:
    """What forward passes ran: passes, real tokens and token slots (real + padding), and the seconds of each of
    MODEL_STAGES, added up across calls."""

    passes: int = 0
    tokens: int = 0
    slots: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODEL_STAGES, 0.0))

    @property
    def padding(self) -> float:
        """The fraction of token slots that were padding."""
        return 1 - self.tokens / self.slots if self.slots else 0.0


Text = str | tuple[str, str]


def pad_adapters(tensors: dict[str, torch.Tensor], size: int, target: int) -> dict[str, torch.Tensor]:
    """A task's tensors with its adapters zero-padded from bottleneck `size` to `target`.

    The extra down-projection columns and bias entries are zero, so the extra hidden units are
    GELU(0) = 0, and the extra up-projection rows are zero: the adapter's output is unchanged.
    """
    extra = target - size
    if extra == 0:
        return tensors
    padded = {}
    for key, value in tensors.items():
        if key.endswith((".down_weight", ".down_bias")):
            value = F.pad(value, (0, extra))
        elif key.endswith(".up_weight"):
            value = F.pad(value, (0, 0, 0, extra))
        padded[key] = value
    return padded



def trim_adapters(tensors: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """The inverse of `pad_adapters`: a task's padded tensors cut back to its own bottleneck `size`."""
    trimmed = {}
    for key, value in tensors.items():
        if key.endswith(".down_weight"):
            value = value[:, :size]
        elif key.endswith(".down_bias"):
            value = value[:size]
        elif key.endswith(".up_weight"):
            value = value[:size]
        trimmed[key] = value.contiguous()
    return trimmed


class FrozenBase:
    """A base checkpoint loaded once, frozen, on its device, with its tokenizer; Predictors share its weights."""

    def __init__(
        self, base_dir: Path, *, device: str | torch.device = "auto", dtype: torch.dtype = torch.float32
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        checkpoint.quiet_transformers()
        self.device = pick_device(device)
        self.encoder, info = AutoModel.from_pretrained(base_dir, dtype=dtype, output_loading_info=True)
        probe.check_loading(info, f"base {base_dir}")
        self.encoder = self.encoder.requires_grad_(False).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        probe.check_tokenizer(self.tokenizer, f"base {base_dir}")

    def encoder_copy(self) -> torch.nn.Module:
        """The encoder's modules copied around the very same weight tensors: adapters injected into the copy leave
        this one as it is."""
        shared = {id(tensor): tensor for tensor in itertools.chain(self.encoder.parameters(), self.encoder.buffers())}
        return copy.deepcopy(self.encoder, shared)


class Predictor:
    """Many tasks on one copy of the base: a batch that mixes tasks runs in one forward pass.

    One `AdapterModel` holds every task's adapters stacked (smaller adapters zero-padded to the
    largest); each example is routed through its own task's adapters and head (always by task id,
    so a task's outputs do not depend on which other tasks are stacked), tokenised with its task's
    max_length. `about` holds what `GET /v1/tasks` lists per task.
    """

    def __init__(self, base: FrozenBase, specs: Sequence[TaskSpec], states: Iterable[dict[str, torch.Tensor]],
                 about: Sequence[dict] | None = None) -> None:
        """`states` (task i's tensors, in `specs` order) may be a generator: each is copied into the stack, then let go,
        so building holds one task's tensors at a time besides the stack."""
        if not specs:
            raise UnknownTask("no tasks to serve: name at least one")
        self.base = base
        self.device = base.device
        self.tokenizer = base.tokenizer
        self.specs = {spec.name: spec for spec in specs}
        self.tasks = [spec.name for spec in specs]
        self.about = {spec.name: info for spec, info in zip(specs, about)} if about is not None else {}
        self._index = {spec.name: t for t, spec in enumerate(specs)}
        self.adapter_size = max(spec.adapter_size for spec in specs)
        self.model = AdapterModel(base.encoder_copy(), self.adapter_size, [spec.head_size for spec in specs])
        for t, (spec, state) in enumerate(zip(specs, states)):
            self.model.load_task_state_dict(pad_adapters(state, spec.adapter_size, self.adapter_size), t)
        self.model.eval()
        self.encode: Callable[..., torch.Tensor] = self.model.encode  # the reference; see registry.serving.onnx_backend
        self.backend = "eager"
        self.pass_cost = PASS_COST_TOKENS

    def use_encoder(self, encode: Callable[..., torch.Tensor], backend: str, pass_cost: int) -> None:
        """Run forward passes through `encode` (`AdapterModel.encode`'s arguments and result) on `backend`, cutting
        windows where that saves more than `pass_cost` padded tokens a pass."""
        self.encode, self.backend, self.pass_cost = encode, backend, pass_cost

    def task_state(self, task: str) -> dict[str, torch.Tensor]:
        """Task `task`'s tensors as it was trained (its own adapter size), copied out of the stack."""
        return trim_adapters(self.model.task_state_dict(self._index[task]), self.specs[task].adapter_size)

    def predict(self, task: str, texts: Sequence[Text], *, batch_size: int = 64) -> list[Prediction]:
        """Predictions for texts (strings, or (text, text_pair) tuples for a pair task) of one task."""
        return self.predict_mixed([(task, text) for text in texts], batch_size=batch_size)

    def predict_mixed(self, items: Sequence[tuple[str, Text]], *, batch_size: int = 64,
                     max_tokens: int | None = None, tally: Tally | None = None) -> list[Prediction]:
        """Predictions for (task, text) items in input order; each batch may mix tasks freely.

        Items are sorted by length and cut into batches of at most `batch_size` rows and (given)
        `max_tokens` padded tokens; `tally` (given) adds up the passes, their tokens and the seconds of each of
        MODEL_STAGES.
        """
        if not items:
            return []
        laps = Laps(tally.seconds if tally is not None else None)
        task_of = np.array([self._task_index(task) for task, _ in items], dtype=np.int64)
        encoded = self._tokenise(items, task_of)
        outputs: list[np.ndarray | None] = [None] * len(items)
        laps.lap("tokenise")
        with torch.inference_mode():
            for batch in batches(encoded, batch_size, pad_id=self.tokenizer.pad_token_id, shuffle=False, seed=0,
                                 max_tokens=max_tokens, pass_cost=self.pass_cost):
                rows = batch["index"].numpy()
                tasks = task_of[rows]
                tokens, slots = int(batch["attention_mask"].sum()), batch["attention_mask"].numel()
                if tally is not None:
                    tally.passes += 1
                    tally.tokens += tokens
                    tally.slots += slots
                laps.lap("batch")
                hidden = self.encode(
                    batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
                    task_ids=torch.from_numpy(tasks).to(self.device),
                    token_type_ids=batch["token_type_ids"].to(self.device) if "token_type_ids" in batch else None)
                wasted = laps.lap("forward") * (1 - tokens / slots)  # the padding slots' share of the pass
                laps.seconds["forward"] -= wasted
                laps.seconds["padding"] = laps.seconds.get("padding", 0.0) + wasted
                for t in np.unique(tasks):
                    mine = np.flatnonzero(tasks == t)
                    logits = self.model.heads[t](hidden[torch.from_numpy(mine).to(self.device)]).float().cpu().numpy()
                    for row, logit in zip(rows[mine], logits):
                        outputs[row] = logit
                laps.lap("output")
        try:
            return self._results(task_of, outputs)
        finally:
            laps.lap("output")

    def _results(self, task_of: np.ndarray, outputs: list[np.ndarray]) -> list[Prediction]:
        """Each output's answer; NonFiniteOutput (holding the other answers) when a task gave NaN or infinity."""
        broken = sorted({self.tasks[t] for t, output in zip(task_of, outputs) if not np.isfinite(output).all()})
        results = [None if self.tasks[t] in broken else self._result(self.specs[self.tasks[t]], output)
                   for t, output in zip(task_of, outputs)]
        if broken:
            more = f" (and {len(broken) - 1} more)" if broken[1:] else ""
            raise NonFiniteOutput(
                f"task {broken[0]!r} gave NaN or infinite outputs{more}: its adapter is broken, no answer is given; "
                "run `registry verify`, or re-add the task",
                frozenset(broken), results)
        return results

    def _task_index(self, task: str) -> int:
        if task not in self._index:
            raise UnknownTask(f"no task named {task!r} here; tasks: {', '.join(self.tasks)}")
        return self._index[task]

    def _tokenise(self, items: Sequence[tuple[str, Text]], task_of: np.ndarray) -> Encoded:
        """Token ids per item, each task's items as its training data was tokenised (encoding.tokenise)."""
        n = len(items)
        ids: list[np.ndarray] = [None] * n
        types: list[np.ndarray] = [None] * n
        for t in np.unique(task_of):
            spec = self.specs[self.tasks[t]]
            rows = np.flatnonzero(task_of == t)
            texts = [split_text(spec, items[i][1]) for i in rows]
            task_ids, task_types = tokenise(
                self.tokenizer,
                [a for a, _ in texts],
                [b for _, b in texts] if spec.pair else None,
                max_length=spec.max_length,
            )
            for k, i in enumerate(rows):
                ids[i] = np.asarray(task_ids[k], dtype=np.int64)
                types[i] = np.asarray(task_types[k], dtype=np.int64) if task_types is not None else None
        if all(t is None for t in types):
            types = None
        else:  # single-text rows next to pairs: segment 0 everywhere, as the model assumes when given none
            types = [t if t is not None else np.zeros_like(ids[i]) for i, t in enumerate(types)]
        return Encoded(input_ids=ids, labels=np.zeros(n, dtype=np.int64), token_type_ids=types)

    @staticmethod
    def _result(spec: TaskSpec, output: np.ndarray) -> Prediction:
        if spec.task_type == "regression":
            return Prediction(spec.name, float(output[0]), None, None)
        shifted = np.exp(output.astype(np.float64) - output.max())
        probabilities = shifted / shifted.sum()
        best = int(output.argmax())
        return Prediction(spec.name, spec.labels[best], float(probabilities[best]),
                          {label: float(p) for label, p in zip(spec.labels, probabilities)})


def split_text(spec: TaskSpec, item: Text) -> tuple[str, str | None]:
    """(text, text_pair) of one input, refused when it does not fit the task's single text or pair."""
    if isinstance(item, str):
        text, pair = item, None
    elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        text, pair = item
    else:
        raise DataError(
            f"task {spec.name!r}: an input must be a string or a (text, text_pair) pair of strings, got {item!r}"
        )
    if spec.pair and pair is None:
        raise DataError(
            f"task {spec.name!r} reads a text pair ({' + '.join(spec.text_columns)}): give each input with its "
            "text_pair"
        )
    if not spec.pair and pair is not None:
        raise DataError(f"task {spec.name!r} reads one text ({spec.text_columns[0]}): give inputs without a text_pair")
    return text, pair


# --------------------------------------------------------------------------------------------
# requests from the command line


def read_requests(path: str | os.PathLike, task: str | None = None) -> list[tuple[str, Text]]:
    """(task, text) items from a JSON-lines file of {"task", "text", "text_pair"} rows; `task` fills a missing task."""
    items = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; pass a UTF-8 JSON-lines file") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(
                f'{path} line {number} is not JSON: write one {{"task", "text", "text_pair"}} object per line'
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(
                f'{path} line {number} has no "text" string: write one {{"task", "text", "text_pair"}} object per line'
            )
        name = row.get("task") or task
        if not isinstance(name, str):
            raise DataError(f"{path} line {number} names no task: add \"task\" to the row or pass --task")
        pair = row.get("text_pair")
        if pair is not None and not isinstance(pair, str):
            raise DataError(f"{path} line {number}: \"text_pair\" must be a string")
        items.append((name, row["text"] if pair is None else (row["text"], pair)))
    if not items:
        raise DataError(f"{path} holds no rows: write one {{\"task\", \"text\", \"text_pair\"}} object per line")
    return items


def predict_rows(open_predictor: Callable[[list[str]], Predictor], task: str | None, texts: Sequence[str],
                 input_path: str | os.PathLike | None, *, batch_size: int = 64) -> list[dict]:
    """`registry predict`: TEXT arguments of `task` (a pair task takes them two by two) or --input rows.

    `open_predictor(names)` builds the predictor for the tasks the rows need (a bundle or the registry).
    """
    if bool(texts) == (input_path is not None):
        raise DataError("give either TEXT arguments (with --task) or --input FILE.jsonl")
    if input_path is not None:
        items = read_requests(input_path, task)
        predictor = open_predictor(list(dict.fromkeys(name for name, _ in items)))
    else:
        if task is None:
            raise DataError("TEXT arguments need --task NAME")
        predictor = open_predictor([task])
        if predictor.specs[task].pair:
            if len(texts) % 2:
                raise DataError(
                    f"task {task!r} reads text pairs: give an even number of TEXT arguments (each text, then its "
                    "pair), or use --input"
                )
            items = [(task, (texts[i], texts[i + 1])) for i in range(0, len(texts), 2)]
        else:
            items = [(task, text) for text in texts]
    predictions = predictor.predict_mixed(items, batch_size=batch_size)
    return [
        {
            "task": name,
            "text": text if isinstance(text, str) else text[0],
            "text_pair": None if isinstance(text, str) else text[1],
            **{k: v for k, v in p.as_dict().items() if k != "task"},
        }
        for (name, text), p in zip(items, predictions)
    ]

