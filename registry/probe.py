"""Probes before the registry takes a base or a task: no silent wrong answers.

A base's weights must match its config exactly (transformers' loading info: no missing, unexpected or
mis-shaped tensor, which transformers would fill at random or drop), its tokenizer must know the words of
plain English sentences (a checkpoint without its tokenizer files reads every word as [UNK]), and a forward
pass on those sentences must give finite outputs; so must every task's adapters and head on the base.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from registry.errors import BaseModelError

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


def check_tasks(predictor, names: Sequence[str]) -> None:
    """Run the probe sentences through each of `names` on `predictor`: NonFiniteOutput names those that fail."""
    items = [(name, (text, text) if predictor.specs[name].pair else text) for name in names for text in PROBE_TEXTS]
    predictor.predict_many(items)
