"""Houlsby bottleneck adapters (Houlsby et al. 2019) injected into a frozen BERT-family encoder.

Each transformer layer gets two serial adapters, one after the attention output projection and one
after the feed-forward output projection, both after dropout and before the residual add + LayerNorm.
Per task, only the adapters, the layers' LayerNorms and a head on the [CLS] representation train.

Every injected module stacks the weights of T tasks on a leading dimension. Without task ids it runs
plain matmuls on slot 0 (training, T == 1); with task ids (serving, any T) it gathers each example's
weights by the task ids in the shared `Routing` object, so one forward pass serves a batch that mixes
tasks, and a task's outputs do not change when tasks are added to or dropped from the stack.
"""

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from registry.errors import ArtifactError, NoMatchingModules

INIT_STD = 1e-3  # the reference implementation's; 1e-2 scored lower (docs/benchmarks.md, bench.recipe)


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where adapters and trainable LayerNorms go in one model family, as module-name regexes."""

    adapter_targets: tuple[str, ...]
    layer_norms: tuple[str, ...]
    dropout_attr: str


_BERT_LAYOUT = ArchitectureSpec(
    adapter_targets=(r"layer\.\d+\.attention\.output\.dropout$", r"layer\.\d+\.output\.dropout$"),
    layer_norms=(r"layer\.\d+\.attention\.output\.LayerNorm$", r"layer\.\d+\.output\.LayerNorm$"),
    dropout_attr="hidden_dropout_prob",
)

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "bert": _BERT_LAYOUT,
    "roberta": _BERT_LAYOUT,
    "xlm-roberta": _BERT_LAYOUT,
    "electra": _BERT_LAYOUT,
    # DistilBERT has no dropout after the attention's out_lin; its FFN ends lin2 -> dropout.
    "distilbert": ArchitectureSpec(
        adapter_targets=(r"layer\.\d+\.attention\.out_lin$", r"layer\.\d+\.ffn\.dropout$"),
        layer_norms=(r"layer\.\d+\.sa_layer_norm$", r"layer\.\d+\.output_layer_norm$"),
        dropout_attr="dropout",
    ),
}


@dataclass(eq=False)
class Routing:
    """The task id of each example in the current batch, shared by all injected modules of a model."""

    task_ids: torch.Tensor | None = None


class Adapter(nn.Module):
    """Bottleneck adapter x + up(gelu(down(x))) with weights for n_tasks tasks."""

    def __init__(self, hidden: int, size: int, n_tasks: int, routing: Routing) -> None:
        super().__init__()
        self.routing = routing
        self.down_weight = nn.Parameter(torch.empty(n_tasks, hidden, size))
        self.down_bias = nn.Parameter(torch.zeros(n_tasks, size))
        self.up_weight = nn.Parameter(torch.empty(n_tasks, size, hidden))
        self.up_bias = nn.Parameter(torch.zeros(n_tasks, hidden))
        for weight in (self.down_weight, self.up_weight):
            nn.init.trunc_normal_(weight, mean=0.0, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply each example's task adapter to x of shape [B, L, H]."""
        if self.routing.task_ids is None:  # one task (training): slot 0
            h = F.gelu(F.linear(x, self.down_weight[0].T, self.down_bias[0]))
            return x + F.linear(h, self.up_weight[0].T, self.up_bias[0])
        ids = self.routing.task_ids
        h = F.gelu(torch.baddbmm(self.down_bias[ids].unsqueeze(1), x, self.down_weight[ids]))
        return x + torch.baddbmm(self.up_bias[ids].unsqueeze(1), h, self.up_weight[ids])


class TaskLayerNorm(nn.Module):
    """A LayerNorm with one affine (weight, bias) per task, initialised from a base LayerNorm."""

    def __init__(self, base: nn.LayerNorm, n_tasks: int, routing: Routing) -> None:
        super().__init__()
        self.routing = routing
        self.normalized_shape = tuple(base.normalized_shape)
        self.eps = base.eps
        self.weight = nn.Parameter(base.weight.detach().clone().expand(n_tasks, -1).contiguous())
        self.bias = nn.Parameter(base.bias.detach().clone().expand(n_tasks, -1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x of shape [B, L, H] with each example's task scale and shift."""
        if self.routing.task_ids is None:
            return F.layer_norm(x, self.normalized_shape, self.weight[0], self.bias[0], self.eps)
        ids = self.routing.task_ids
        normed = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        return normed * self.weight[ids].unsqueeze(1) + self.bias[ids].unsqueeze(1)


class AdapterWrapper(nn.Module):
    """Runs the wrapped module, then the adapter on its output."""

    def __init__(self, inner: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.inner = inner
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return adapter(inner(x))."""
        return self.adapter(self.inner(x))


def _matching_names(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of the modules whose name matches any of the regexes."""
    return [name for name, _ in model.named_modules() if any(re.search(p, name) for p in patterns)]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put module in place of the submodule called name."""
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, module)


class AdapterModel(nn.Module):
    """A frozen encoder with injected adapters for n_tasks tasks and one head per task."""

    def __init__(self, encoder: transformers.PreTrainedModel, adapter_size: int, head_sizes: list[int]) -> None:
        """Freeze encoder and inject adapters into it in place; head_sizes[t] is task t's output count."""
        super().__init__()
        config = encoder.config
        model_type = config.model_type
        spec = ARCHITECTURES.get(model_type)
        targets = _matching_names(encoder, spec.adapter_targets) if spec else []
        norms = _matching_names(encoder, spec.layer_norms) if spec else []
        if not targets or not norms:
            supported = ", ".join(sorted(ARCHITECTURES))
            raise NoMatchingModules(
                f"found no adapter targets in a '{model_type}' model; use a base model of a supported type: {supported}"
            )
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", 0)
        if len(targets) != 2 * layers or len(norms) != 2 * layers:
            # A module renamed in some transformers release would otherwise leave part of the model without adapters.
            raise NoMatchingModules(
                f"matched {len(targets)} adapter targets and {len(norms)} LayerNorms in a '{model_type}' model of "
                f"{layers} layers, expected {2 * layers} of each; this transformers version names its modules "
                "differently: use a supported transformers version"
            )

        reference = encoder.get_input_embeddings().weight
        encoder.requires_grad_(False)
        self.n_tasks = len(head_sizes)
        self.routing = Routing()
        for name in targets:
            adapter = Adapter(config.hidden_size, adapter_size, self.n_tasks, self.routing)
            _replace(encoder, name, AdapterWrapper(encoder.get_submodule(name), adapter))
        for name in norms:
            _replace(encoder, name, TaskLayerNorm(encoder.get_submodule(name), self.n_tasks, self.routing))
        self.encoder = encoder
        self.injected: list[str] = targets
        self.layer_norms: list[str] = norms
        self.dropout = nn.Dropout(getattr(config, spec.dropout_attr))
        self.heads = nn.ModuleList(nn.Linear(config.hidden_size, n) for n in head_sizes)
        self.to(device=reference.device, dtype=reference.dtype)
        self.train(encoder.training)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        task_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The [CLS] representation [B, H]; task_ids [B] picks each example's task (needed when n_tasks > 1).

        token_type_ids mark the second text of a pair, for models that use segment ids (BERT).
        """
        if task_ids is None and self.n_tasks > 1:
            raise ValueError(f"this model holds {self.n_tasks} tasks: pass task_ids to encode()")
        if task_ids is not None:
            if task_ids.shape != (input_ids.shape[0],):
                raise ValueError(f"task_ids must have shape [{input_ids.shape[0]}], got {list(task_ids.shape)}")
            if task_ids.numel() and (int(task_ids.min()) < 0 or int(task_ids.max()) >= self.n_tasks):
                raise ValueError(f"task_ids must lie in [0, {self.n_tasks})")
        self.routing.task_ids = task_ids
        try:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                inputs["token_type_ids"] = token_type_ids
            return self.encoder(**inputs).last_hidden_state[:, 0]
        finally:
            self.routing.task_ids = None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B, n_out] of a single-task model."""
        return self.heads[0](self.dropout(self.encode(input_ids, attention_mask, token_type_ids=token_type_ids)))

    def _task_tensors(self, task: int) -> dict[str, torch.Tensor]:
        """Views of one task's trainable tensors under task-free keys."""
        tensors = {}
        for name, module in self.encoder.named_modules():
            if isinstance(module, (Adapter, TaskLayerNorm)):
                for param_name, param in module.named_parameters():
                    tensors[f"{name}.{param_name}"] = param[task]
        for param_name, param in self.heads[task].named_parameters():
            tensors[f"head.{param_name}"] = param
        return tensors

    def task_state_dict(self, task: int = 0) -> dict[str, torch.Tensor]:
        """One task's adapters, layer norms and head as contiguous CPU copies."""
        return {
            key: value.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for key, value in self._task_tensors(task).items()
        }

    def load_task_state_dict(self, tensors: dict[str, torch.Tensor], task: int = 0) -> None:
        """Copy one task's tensors into slot task; raise ArtifactError if they do not fit this model."""
        targets = self._task_tensors(task)
        missing = sorted(targets.keys() - tensors.keys())
        unexpected = sorted(tensors.keys() - targets.keys())
        if missing or unexpected:
            raise ArtifactError(
                f"task weights do not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, "
                f"e.g. {(missing + unexpected)[0]!r}): export them again from a task trained on this base"
            )
        for key, target in targets.items():
            if tensors[key].shape != target.shape:
                raise ArtifactError(
                    f"task tensor {key!r} has shape {list(tensors[key].shape)}, this model needs "
                    f"{list(target.shape)}: use the adapter size and label count the task was trained with"
                )
        with torch.no_grad():
            for key, target in targets.items():
                target.copy_(tensors[key])


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters that require grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
