"""Probes before the registry takes a base or a task: no silent wrong answers.

A base's weights must match its config exactly (transformers' loading info: no missing, unexpected or
mis-shaped tensor, which transformers would fill at random or drop), its tokenizer must know the words of
plain English sentences (a checkpoint without its tokenizer files reads every word as [UNK]), and a forward
pass on those sentences must give finite outputs; so must every task's adapters and head on the base.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from registry.errors import BaseModelError, NonFiniteOutput
from registry.formats import head_size
from registry.model.adapters import AdapterModel

PROBE_TEXTS = ("i love this film and it is great", "it was not a good movie")  # words every vocabulary has
LOADING_PROBLEMS = (("missing_keys", "missing"), ("unexpected_keys", "unexpected"), ("mismatched_keys", "mis-shaped"))


def check_loading(info: dict, where: str) -> None:
    """Refuse weights that do not match the model's config (`output_loading_info=True`'s answer)."""
    for key, what in LOADING_PROBLEMS:
        names = sorted(str(name[0] if isinstance(name, tuple) else name) for name in info.get(key) or ())
        if names:
            raise BaseModelError(
                f"{where}: {len(names)} {what} weight tensor(s) for its config.json (e.g. {names[0]!r}): the registry "
                "never fills or drops weights; pass a checkpoint whose config.json and weights agree")


def check_tokenizer(tokenizer, where: str) -> None:
    """Refuse a tokenizer that reads every word of a probe sentence as unknown (its vocabulary files are missing)."""
    unknown = tokenizer.unk_token_id
    for text in PROBE_TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids or all(i == unknown for i in ids):
            raise BaseModelError(
                f"{where}: its tokenizer reads every word of {text!r} as unknown (tokenizer files missing or empty): "
                "pass a checkpoint with its tokenizer files (vocab.txt, tokenizer.json, ...)")


def check_encoder(encoder: torch.nn.Module, tokenizer, where: str) -> None:
    """Refuse a base whose forward pass on the probe sentences gives NaN or infinite outputs."""
    encoded = tokenizer(list(PROBE_TEXTS), padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = encoder(**{k: v.to(encoder.device) for k, v in encoded.items()}).last_hidden_state
    if not torch.isfinite(hidden).all():
        raise BaseModelError(f"{where}: gives NaN or infinite outputs on a probe sentence (broken weights): "
                             "pass a checkpoint that works")


def load_base(base_dir, where: str) -> tuple[torch.nn.Module, object]:
    """The frozen encoder (float32, on the CPU) and tokenizer at `base_dir`, checked as a served base is."""
    from transformers import AutoModel, AutoTokenizer

    encoder, info = AutoModel.from_pretrained(base_dir, dtype=torch.float32, output_loading_info=True)
    check_loading(info, where)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    check_tokenizer(tokenizer, where)
    return encoder.requires_grad_(False).eval(), tokenizer


def check_adapters(encoder: torch.nn.Module, tokenizer, name: str, config: dict, state: dict[str, torch.Tensor]) \
        -> None:
    """Run the probe sentences through task `name`'s adapters and head (its config artifact's fields, its tensors) on
    a copy of `encoder`: ArtifactError when they do not fit it, NonFiniteOutput when the outputs are not finite.

    Where no Predictor can be had (training and bundles sit below serving), this is the same check.
    """
    model = AdapterModel(copy.deepcopy(encoder), int(config["adapter_size"]),
                         [head_size(config["task_type"], config.get("labels"))])
    model.load_task_state_dict(state)
    texts = list(PROBE_TEXTS)
    pairs = texts if len(config["text_columns"]) == 2 else None
    encoded = tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt")
    device = next(encoder.parameters()).device
    with torch.inference_mode():
        logits = model.eval()(encoded["input_ids"].to(device), encoded["attention_mask"].to(device),
                              encoded["token_type_ids"].to(device) if "token_type_ids" in encoded else None)
    if not torch.isfinite(logits).all():
        raise NonFiniteOutput(f"task {name!r} gave NaN or infinite outputs on a probe sentence", frozenset({name}))


def check_tasks(predictor, names: Sequence[str]) -> None:
    """Run the probe sentences through each of `names` on `predictor`: NonFiniteOutput names those that fail."""
    items = [(name, (text, text) if predictor.specs[name].pair else text) for name in names for text in PROBE_TEXTS]
    predictor.predict_mixed(items)
