"""A task's text embedding, stored when the task is added: what `--init-from auto` ranks earlier tasks by.

SEmb (Poth et al., "What to Pre-Train on? Efficient Intermediate Task Selection", EMNLP 2021): the mean of the
base model's sentence embeddings over a task's training texts; two tasks are as similar as the cosine of their
means (here centred on the registry's mean first: `centred_similarities`). Here a sentence embedding is the
frozen base's last hidden states (no adapters) averaged over the tokens and scaled to unit length (how
sentence-transformers pools MiniLM), on at most `ROWS` seeded training rows.

It costs one forward pass of those rows per added task, and ranking a new task against every earlier one is then
a dot product per task (after centring every embedding on their mean): no forward pass per earlier task. The
vector is stored as a content-addressed safetensors artifact (kind `KIND`) that the task version names
(task_versions.embedding_sha256, revision 0005).
Bundles do not carry it: an imported task has none, and auto treats it as it treats a task added before 0005
(registry.training.transfer).
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors, save as save_tensors

from registry.data.encoding import Encoded, batches
from registry.model import checkpoint
from registry.errors import ArtifactError

ROWS = 256
KIND = "task-embedding"
KEY = "embedding"
# Two earlier tasks whose centred embeddings are at least this alike hold the same kind of data (measured on a
# registry of six data sets at five sizes and seeds: one data set's tasks 0.88-0.99, two data sets' at most 0.75).
SAME_DATA = 0.85


def of_task(base_dir, train_set: Encoded, seed: int, *, pad_id: int, device: torch.device) -> np.ndarray:
    """The embedding of a task: `compute` on at most `ROWS` of its training rows, seeded, through the base alone."""
    rows = train_set.take(np.random.default_rng(seed).permutation(len(train_set))[:ROWS])
    return compute(load_encoder(base_dir), rows, pad_id=pad_id, device=device)


def load_encoder(base_dir) -> torch.nn.Module:
    """The frozen base alone, in evaluation mode (no adapters, no dropout)."""
    from transformers import AutoModel

    checkpoint.quiet_transformers()
    encoder = AutoModel.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False)
    return encoder.requires_grad_(False).eval()


def compute(encoder: torch.nn.Module, rows: Encoded, *, pad_id: int, device: torch.device,
            batch_size: int = 64) -> np.ndarray:
    """The mean over `rows` of their unit-length, token-averaged last hidden states: one forward pass."""
    encoder.to(device)
    total = torch.zeros(encoder.config.hidden_size, dtype=torch.float64)
    names = ("input_ids", "attention_mask", "token_type_ids")
    with torch.inference_mode():
        for batch in batches(rows, batch_size, pad_id=pad_id, shuffle=False, seed=0):
            inputs = {name: batch[name].to(device) for name in names if name in batch}
            hidden = encoder(**inputs).last_hidden_state.float()
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            total += torch.nn.functional.normalize(pooled, dim=-1).sum(dim=0).double().cpu()
    return (total / max(1, len(rows.labels))).numpy()


def to_bytes(vector: np.ndarray) -> bytes:
    """The embedding as a safetensors file: one float32 vector under `KEY`."""
    return save_tensors({KEY: torch.from_numpy(np.asarray(vector, dtype=np.float32))})


def from_bytes(data: bytes, hidden_size: int) -> np.ndarray:
    """An embedding read back from its (already verified) bytes; ArtifactError unless it is one finite vector of
    the base's hidden size."""
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError) as exc:
        raise ArtifactError(f"a stored task embedding is not a safetensors file ({exc})") from None
    vector = tensors.get(KEY)
    if set(tensors) != {KEY} or vector.shape != (hidden_size,) or not torch.isfinite(vector).all():
        raise ArtifactError(f"a stored task embedding is not one finite vector of {hidden_size} values: "
                            "run `registry verify`")
    return vector.double().numpy()


def centred(new: np.ndarray, earlier: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The new task's embedding and the earlier ones, all centred on their mean when there are at least two
    earlier ones.

    Every task's mean embedding shares a large part (what any English text looks like to the base); centring
    removes it, so a cosine measures what sets two tasks apart from the rest of the registry: reviews next to
    reviews rather than next to any short single sentence. With one earlier task there is nothing to centre on.
    """
    centre = np.mean([new, *earlier], axis=0) if len(earlier) > 1 else np.zeros_like(new)
    return new - centre, [vector - centre for vector in earlier]


def centred_similarities(new: np.ndarray, earlier: list[np.ndarray]) -> list[float]:
    """The cosine of the new task's embedding and each earlier one's, `centred`."""
    new, earlier = centred(new, earlier)
    return [similarity(new, vector) for vector in earlier]


def shortlist(new: np.ndarray, earlier: list[np.ndarray], k: int, quality: list[float]) -> list[int]:
    """The indices of `k` earlier tasks for the new one to trial: one per kind of data, the kinds most similar
    first.

    A kind is the earlier tasks `SAME_DATA`-alike to its most similar member (one data set's tasks, say, at other
    sizes or seeds: trials of them all would ask one question), and the member of best `quality` (its validation
    score) stands for it. Places that distinct kinds leave are filled from the other members, most similar first.
    """
    new, earlier = centred(new, earlier)
    order = sorted(range(len(earlier)), key=[-similarity(new, vector) for vector in earlier].__getitem__)
    kinds: list[list[int]] = []
    for i in order:
        kind = next((kind for kind in kinds if similarity(earlier[i], earlier[kind[0]]) >= SAME_DATA), None)
        if kind is None:
            kinds.append([i])
        else:
            kind.append(i)
    taken = [max(kind, key=lambda i: quality[i]) for kind in kinds[:k]]
    return taken + [i for i in order if i not in taken][:k - len(taken)]


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine of two embeddings (0 when either is zero)."""
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norms) if norms > 0 else 0.0
