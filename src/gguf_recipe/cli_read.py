"""The ``recipe infer`` and ``recipe diff`` commands (:func:`register` adds them to the ``recipe`` app), and
the ``--heatmap`` helpers ``recipe plan`` shares with them. Thin: the work is :mod:`gguf_recipe.read`'s.

    recipe infer QUANT.gguf [-o R.yaml] [--source SRC.gguf] [--name NAME]
    recipe diff A B [C ...] [--model MODEL] [--imatrix F] [--only-different] [--format table|markdown|json]
                [--heatmap FILE.svg|png] [-o FILE]
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from .read.views import QuantView


def _err(text: str) -> None:
    typer.echo(text, err=True)


def check_heatmap(path: Path | None) -> None:
    """Before any work: exit 1 with what to install when ``--heatmap`` cannot be drawn."""
    if path is None:
        return
    from .read.heatmap import HeatmapUnavailableError, check_heatmap_path

    try:
        check_heatmap_path(path)
    except HeatmapUnavailableError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None


def write_heatmap(views: list[QuantView], path: Path, *, labels: list[str] | None = None) -> None:
    """Draw ``views`` into ``path``; a missing matplotlib is a clear error (exit 1) naming what to install."""
    from .read.heatmap import HeatmapUnavailableError, draw_heatmap

    try:
        draw_heatmap(views, path, labels=labels)
    except HeatmapUnavailableError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    _err(f"wrote {path}")


def infer_cmd(
    quant: Annotated[str, typer.Argument(help="quantized GGUF (any file of a -0000k-of-0000n split)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the recipe here")] = None,
    source: Annotated[
        str | None,
        typer.Option("--source", help="the model it was made from: plan against it (explains pruned layers)"),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="recipe name")] = None,
) -> None:
    """The shortest recipe that reproduces a quantized GGUF's tensor types, checked by planning it again."""
    from .model.reader import GGUFReadError
    from .read.infer import InferError, infer_recipe

    try:
        res = infer_recipe(quant, source=source, name=name)
    except InferError as exc:
        _err(f"error: {exc}")
        for tensor, (want, got) in list(exc.mismatches.items())[:10]:
            _err(f"  {tensor}: the file has {want}, the closest recipe plans {got}")
        _err("nothing was written")
        raise typer.Exit(1) from None
    except (GGUFReadError, OSError, ValueError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    for note in res.notes:
        _err(f"note: {note}")
    summary = (
        f"{res.base}, {res.n_rules} rule{'s' if res.n_rules != 1 else ''}"
        + (", counters: llama-quantize" if res.counters != "stable" else "")
        + (", imatrix" if res.imatrix else "")
        + (f", prune_layers {res.prune_layers}" if res.prune_layers else "")
        + f": all {res.n_tensors} tensors replan to their type"
    )
    if output is not None:
        output.write_text(res.text, encoding="utf-8")
        _err(f"wrote {output}: {summary}")
    else:
        sys.stdout.write(res.text)
        _err(summary)


class DiffFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


def diff_cmd(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="GGUF files (or any file of a split), plan JSON files, or recipes (with --model)"
        ),
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="the model to plan recipe inputs against")
    ] = None,
    imatrix: Annotated[
        str | None, typer.Option("--imatrix", help="importance matrix for planning recipe inputs")
    ] = None,
    only_different: Annotated[
        bool, typer.Option("--only-different", help="show only the rows where the inputs differ")
    ] = False,
    fmt: Annotated[DiffFormat, typer.Option("--format", "-f", help="output format")] = DiffFormat.table,
    heatmap: Annotated[
        Path | None, typer.Option("--heatmap", help="also draw layer × tensor family → type (.svg or .png)")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the table here")] = None,
) -> None:
    """Compare quantized files, plans and recipes tensor by tensor (model-card table)."""
    from .model.reader import GGUFReadError
    from .read.diff import diff_views, render_diff
    from .read.views import ViewError, load_view

    if len(inputs) < 2:
        _err("error: give two or more inputs to compare")
        raise typer.Exit(2)
    check_heatmap(heatmap)
    try:
        views = [load_view(a, model=model, imatrix=imatrix) for a in inputs]
    except (ViewError, GGUFReadError, OSError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    result = diff_views(views)
    text = render_diff(result, fmt.value, only_different=only_different)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        _err(f"wrote {output}")
    else:
        sys.stdout.write(text)
    if heatmap is not None:
        write_heatmap(result.views, heatmap, labels=result.labels)


def register(app: typer.Typer) -> None:
    """Add ``infer`` and ``diff`` to the ``recipe`` command."""
    app.command("infer")(infer_cmd)
    app.command("diff")(diff_cmd)
