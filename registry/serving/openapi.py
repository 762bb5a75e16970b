"""The server's OpenAPI document, exact for the tasks it serves now.

FastAPI derives the predict body's schema from its models, which cannot say which task reads a text
pair or how long a text may be: a body that document calls valid could still be refused. Here the
body becomes one alternative per served task (its name as a constant, `text_pair` required or
absent as the task reads it, texts at most `max_text_chars`, at most `max_inputs` inputs) plus the
mixed form, so what the document allows the server accepts, and what it refuses the document
forbids (tests/test_fuzz_http.py checks both with Schemathesis). The body can still pass
`--max-body-bytes` or find the queue full (413, 503; documented).
"""

from __future__ import annotations

from registry.storage.config import ServeLimits

OPEN_PATHS = {"/healthz"}
REF = "#/components/schemas/"


def served_schema(document: dict, predictor, limits: ServeLimits, *, secured: bool) -> dict:
    """`document` (FastAPI's) with the predict body for `predictor`'s tasks, and bearer auth when `secured`."""
    specs = predictor.specs if predictor is not None else {}
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    text = {"type": "string", "maxLength": limits.max_text_chars}
    for name, spec in specs.items():
        schemas[component(name, named=True)] = one_input(name, spec.pair, text, named=True)
        schemas[component(name, named=False)] = one_input(name, spec.pair, text, named=False)
    named = {"anyOf": [{"$ref": REF + component(name, named=True)} for name in specs]} if specs else {"not": {}}
    schemas["NamedInput"] = named

    def inputs(*choices: dict) -> dict:
        return {"type": "array", "minItems": 1, "maxItems": limits.max_inputs, "items": {"anyOf": list(choices)}}

    forms = [{"type": "object", "additionalProperties": False, "required": ["task", "inputs"],
              "properties": {"task": {"const": name},
                             "inputs": inputs(*([] if spec.pair else [text]),
                                              {"$ref": REF + component(name, named=False)},
                                              {"$ref": REF + "NamedInput"})}}
             for name, spec in specs.items()]
    forms.append({"type": "object", "additionalProperties": False, "required": ["inputs"],
                  "properties": {"task": {"type": "null"}, "inputs": inputs({"$ref": REF + "NamedInput"})}})
    schemas["PredictRequest"] = {"title": "PredictRequest", "anyOf": forms,
                                 "description": "One task for every input (`task` + inputs), or each input naming "
                                                "its own task (the mixed form). Inputs of a pair task need "
                                                "`text_pair`; others must not have one."}
    if secured:
        secure(document)
    return document


def component(task: str, *, named: bool) -> str:
    """The component name of one task's input: naming its task (mixed form) or not (the task is the body's)."""
    return f"Input.{'named' if named else 'default'}.{task}"


def one_input(task: str, pair: bool, text: dict, *, named: bool) -> dict:
    """One input of `task` as an object: its text, its text_pair (required for a pair, else null or absent)."""
    properties = {"text": text, "text_pair": text if pair else {"type": "null"},
                  "task": {"const": task} if named else {"anyOf": [{"const": task}, {"type": "null"}]}}
    required = ["text", *(["text_pair"] if pair else []), *(["task"] if named else [])]
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": required}


def secure(document: dict) -> None:
    """Every path but OPEN_PATHS needs the bearer token (401 without it)."""
    document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in document["paths"].items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}]
            operation.setdefault("responses", {})["401"] = {"description": "Missing or wrong bearer token"}
