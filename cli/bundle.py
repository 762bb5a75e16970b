"""`registry export`, `import` and `predict`: bundles that serve every task without the database."""

from __future__ import annotations

import click

from registry.api import Bundle, Registry
from registry.cli.output import device_option, emit, fields, json_option, open_registry, regular_file, table
from registry.cli.read import LIST_COLUMNS
from registry.storage.config import Settings

@click.command()
@click.option("--tasks", "task_names", default="all", show_default=True, help="Which ready tasks: all, or NAME,NAME…")
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=True),
    help="The bundle directory (or .tar with --archive).",
)
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="float16 halves the size; such a bundle can be served but not imported.")
@click.option("--archive", is_flag=True, help="Write one .tar instead of a directory.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --output (never anything else).")
@json_option
@click.pass_obj
def export(
    settings: Settings, task_names: str, output: str, dtype: str, archive: bool, force: bool, as_json: bool
) -> None:
    """Write the base once and every task's adapter into a bundle that serves without the database.

    Example: registry export --tasks all --output bundle/ --archive
    """
    names = None if task_names.strip() == "all" else [name.strip() for name in task_names.split(",") if name.strip()]
    result = open_registry(settings).export(names, output, dtype=dtype, archive=archive, force=force)
    emit(result, as_json, lambda r: fields({**r, "tasks": ", ".join(r["tasks"])}))


@click.command(name="import")
@click.argument("path", type=click.Path(exists=True))
@json_option
@click.pass_obj
def import_(settings: Settings, path: str, as_json: bool) -> None:
    """Add a bundle's tasks after the registry's own; an empty registry starts from the bundle's base.

    Example: registry import bundle.tar
    """
    result = Registry.import_bundle(path, home=settings.home, db=settings.db_url, store=settings.store_url)

    def render(r: dict) -> None:
        if r["initialised"]:
            click.echo(f"initialised {settings.home} with the bundle's base {r['base_sha256'][:12]}")
        table(r["tasks"], LIST_COLUMNS)

    emit(result, as_json, render)


@click.command()
@click.argument("texts", metavar="[TEXT]...", nargs=-1)
@click.option("--task", help="The task of the TEXT arguments (or of --input rows that name none).")
@click.option("--bundle", "bundle_path", type=click.Path(exists=True), help="Serve from this bundle, not the registry.")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False), callback=regular_file,
              help='A JSON-lines file of {"task": …, "text": …, "text_pair": …} rows.')
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@device_option
@json_option
@click.pass_obj
def predict(
    settings: Settings,
    texts: tuple[str, ...],
    task: str | None,
    bundle_path: str | None,
    input_path: str | None,
    batch_size: int,
    device: str,
    as_json: bool,
) -> None:
    """Predict a label and its probability per text, from a bundle or the registry; a pair task takes TEXT two by two.

    Example: registry predict --bundle bundle.tar --task sst2 "a gripping, funny film"
    """
    from registry.serving import predictor

    if bundle_path is not None:
        def open_predictor(names):
            return Bundle.open(bundle_path).predictor(names, device=device)
    else:
        def open_predictor(names):
            return open_registry(settings).predictor(names, device=device)
    rows = predictor.predict_rows(open_predictor, task, texts, input_path, batch_size=batch_size)
    emit(rows, as_json, lambda r: table(r, ("task", "label", "score", "text", "text_pair")))


COMMANDS = [export, import_, predict]
