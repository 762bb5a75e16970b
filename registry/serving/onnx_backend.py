"""ONNX Runtime as a Predictor's encoder: the routed model exported once per task set, run on the CPU.

What is exported is exactly the eager model a Predictor serves (`AdapterModel` with every task's
adapters and LayerNorms stacked): the frozen base, and each example's task weights gathered by its
task id inside the graph, so one ONNX session serves batches that mix tasks. The graph returns the
[CLS] representation; the task heads (one small matmul each) stay in PyTorch. The eager model stays
in the Predictor as the reference (and what the next task set copies unchanged tasks from).

Backends: `eager` (PyTorch), `onnx` (this module; fails when onnxruntime is missing or the export
fails), `auto` (onnx on a CPU when it can, else eager, saying why in the log).
"""

from __future__ import annotations

import inspect
import io
import logging
import threading
import time
import warnings
import weakref

import numpy as np
import torch
from torch import nn

from registry.model.adapters import Adapter, AdapterModel, TaskLayerNorm
from registry.errors import DataError

log = logging.getLogger("registry")

BACKENDS = ("eager", "onnx", "auto")
OPSET = 17
# What one more forward pass costs beyond its tokens, in padded tokens (see encoding._least_padding): ONNX Runtime
# runs a pass with little overhead (MiniLM here: about 5 ms for one input of 8 tokens against 1.8 ms a token in a
# pass of 8 x 32, on the shared 2-core machine), so cutting a window into passes of like lengths pays sooner than in
# eager PyTorch.
PASS_COST_TOKENS = 16


class _Routed(nn.Module):
    """The graph to export: ids, mask, segment ids, task ids and every task's stacked adapter and LayerNorm tensors
    in; each example's [CLS] vector out."""

    def __init__(self, model: AdapterModel, types: bool) -> None:
        super().__init__()
        self.model, self.types = model, types
        self.slots = [(module, key) for _, module in _task_modules(model) for key, _ in
                      module.named_parameters(recurse=False)]

    def forward(self, input_ids, attention_mask, token_type_ids, task_ids, *stacked):
        # The tracer cannot take torch.func.functional_call: the task tensors go in the modules' parameter slots
        # for the trace, and back out after it.
        slots = [(module._parameters, key) for module, key in self.slots]
        kept = [owner[key] for owner, key in slots]
        self.model.routing.task_ids = task_ids
        try:
            for (owner, key), value in zip(slots, stacked):
                owner[key] = value
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if self.types:
                inputs["token_type_ids"] = token_type_ids
            return self.model.encoder(**inputs).last_hidden_state[:, 0]
        finally:
            self.model.routing.task_ids = None
            for (owner, key), value in zip(slots, kept):
                owner[key] = value


def _task_modules(model: AdapterModel) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.encoder.named_modules()
            if isinstance(module, (Adapter, TaskLayerNorm))]


def task_tensors(model: AdapterModel) -> dict[str, torch.Tensor]:
    """The stacked per-task tensors of `model`'s encoder (adapters, LayerNorms) by parameter name, in module order."""
    return {f"{name}.{key}": value for name, module in _task_modules(model)
            for key, value in module.named_parameters(recurse=False)}


def _axes(key: str) -> dict[int, str]:
    """The dynamic axes of one stacked tensor: tasks first; the bottleneck where it has one."""
    if key.endswith(".down_weight"):
        return {0: "tasks", 2: "bottleneck"}
    if key.endswith((".down_bias", ".up_weight")):
        return {0: "tasks", 1: "bottleneck"}
    return {0: "tasks"}


def export(model: AdapterModel) -> tuple[bytes, list[str]]:
    """The ONNX bytes of `model`'s encoder routed by task id, and the names of its task-tensor inputs (in order).

    The base's weights are constants in the graph; the task tensors are inputs (any number of tasks, any bottleneck
    size), so one graph serves every task set on this base. TorchScript exporter; dynamic batch and length.
    """
    tensors = task_tensors(model)
    names = list(tensors)
    inputs = [f"task_tensor_{i}" for i in range(len(names))]
    types = "token_type_ids" in inspect.signature(model.encoder.forward).parameters
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long),
               torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, dtype=torch.long),
               *(value.detach() for value in tensors.values()))
    fixed = ["input_ids", "attention_mask", "token_type_ids", "task_ids"]
    axes = {name: {0: "batch", 1: "length"} for name in fixed[:3]} | {"task_ids": {0: "batch"}, "cls": {0: "batch"}}
    axes |= {name: _axes(key) for name, key in zip(inputs, names)}
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings about Python values in the graph
        torch.onnx.export(_Routed(model, types).eval(), example, buffer, input_names=fixed + inputs,
                          output_names=["cls"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return buffer.getvalue(), names


def session_options(threads: int | None = None):
    """ONNX Runtime's options here: `threads` intra-op threads (default torch's, so OMP_NUM_THREADS rules both), one
    inter-op thread, every graph optimisation, and threads that sleep rather than spin between passes (on the shared
    2-core machine spinning made a pass of one short input 20x slower: 99 against 5 ms)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class Session:
    """One ONNX Runtime session of a base's routed encoder, shared by every task set served on that base."""

    def __init__(self, model: AdapterModel, threads: int | None = None) -> None:
        import onnxruntime

        started = time.perf_counter()
        data, self.names = export(model)
        self.session = onnxruntime.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        log.info("exported the routed encoder to ONNX (%d MB) in %.1f s", len(data) >> 20,
                 time.perf_counter() - started)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # FrozenBase -> Session
_LOCK = threading.Lock()


def session_of(base, model: AdapterModel) -> Session:
    """The session for `base` (a FrozenBase), exported from `model` (a Predictor's model on it) the first time."""
    with _LOCK:
        if base not in _SESSIONS:
            _SESSIONS[base] = Session(model)
        return _SESSIONS[base]


class OnnxEncoder:
    """`AdapterModel.encode` of one Predictor's model in ONNX Runtime: the same arguments, the [CLS] representation
    back as a torch tensor. Its task tensors are fed as they lie in the model (numpy views, no copy)."""

    def __init__(self, session: Session, model: AdapterModel) -> None:
        tensors = task_tensors(model)
        if list(tensors) != session.names:
            raise ValueError("this model's adapters do not match the exported graph's")
        self.session = session
        self.weights = {f"task_tensor_{i}": value.detach().numpy() for i, value in enumerate(tensors.values())}
        self.weights = {name: value for name, value in self.weights.items() if name in session.inputs}

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if task_ids is None:
            task_ids = torch.zeros(input_ids.shape[0], dtype=torch.long)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "task_ids": task_ids}
        feeds = {name: np.ascontiguousarray(value.numpy(), dtype=np.int64) for name, value in feeds.items()
                 if name in self.session.inputs}
        return torch.from_numpy(self.session.session.run(None, feeds | self.weights)[0])


def accelerate(predictor, backend: str = "auto"):
    """`predictor` running its encoder on `backend`; returns it (the eager model stays inside as the reference)."""
    if backend not in BACKENDS:
        raise DataError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "eager":
        return predictor
    if predictor.device.type != "cpu":
        if backend == "onnx":
            raise DataError(f"the onnx backend runs on the CPU, not {predictor.device}: use --device cpu or "
                            "--backend eager")
        return predictor
    try:
        encoder = OnnxEncoder(session_of(predictor.base, predictor.model), predictor.model)
    except Exception as exc:  # onnxruntime missing, or a model the exporter cannot take
        if backend == "onnx":
            raise DataError(f"cannot run the model in ONNX Runtime ({type(exc).__name__}: {exc}): install "
                            "adapter-registry[serve] or use --backend eager") from None
        log.warning("serving with PyTorch eager: ONNX Runtime cannot run this model (%s: %s)", type(exc).__name__, exc)
        return predictor
    predictor.use_encoder(encoder, "onnx", PASS_COST_TOKENS)
    return predictor
