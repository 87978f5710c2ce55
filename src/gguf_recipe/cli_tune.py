"""The ``recipe tune`` command (:func:`register` adds it to the ``recipe`` app) and the calibration step
of ``recipe measure --calibrate``. Thin: the work is :mod:`gguf_recipe.tune`'s and
:mod:`gguf_recipe.measure.calibrate`'s.

    recipe tune MODEL (--target-size SIZE | --target-bpw BPW) [--imatrix FILE] [--extends RECIPE]
                [--pin RULES.yaml] [--types LIST] [--budget 'REGEX=SIZE' ...] [-o TUNED.yaml]
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from .measure import Measurement


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _fail(text: str) -> typer.Exit:
    _err(f"error: {text}")
    return typer.Exit(1)


def _read_text(path: Path) -> str:
    from .inputs import InputFileError, read_input_bytes

    try:
        return read_input_bytes(path, "the calibration text", max_bytes=1 << 30).decode(
            "utf-8", errors="replace"
        )
    except InputFileError as exc:
        raise _fail(str(exc)) from None


def run_calibration(
    m: Measurement,
    model: str,
    imatrix: str | None,
    text_path: Path,
    n_ctx: int,
    n_chunks: int,
    layer_stride: int,
    threads: int | None,
    quiet: bool,
) -> None:
    """``recipe measure --calibrate``: probe every measured tensor with llama.cpp (see
    :mod:`gguf_recipe.measure.calibrate`) and save the result beside the measurement."""
    from .evaluate import EvalError
    from .measure import MeasureError, MeasureInterrupted
    from .measure.calibrate import calibrate_model

    text = _read_text(text_path)
    try:
        cal = calibrate_model(
            model,
            text,
            m,
            text_name=text_path.name,
            imatrix=imatrix,
            n_ctx=n_ctx,
            n_chunks=n_chunks,
            layer_stride=layer_stride,
            threads=threads,
            progress=False if quiet else None,
        )
    except MeasureInterrupted as exc:
        _err(str(exc))
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None
    except (MeasureError, EvalError, OSError) as exc:
        raise _fail(str(exc)) from None
    if not quiet:
        worst = sorted(cal.probes.items(), key=lambda kv: -kv[1].kld)[:3]
        typer.echo(
            f"calibrated {len(cal.probes)} tensors on {cal.text_name} ({cal.n_chunks} x {cal.n_ctx} tokens) "
            f"in {cal.seconds:.0f} s; most sensitive: "
            + ", ".join(f"{n} (KLD {p.kld:.4f} at {p.type})" for n, p in worst)
        )


def tune_cmd(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="source GGUF model (F16/BF16/F32)")],
    target_size: Annotated[
        str | None,
        typer.Option(
            "--target-size",
            metavar="SIZE",
            help="largest output file (what `ls -l` shows): bytes, or 4.2GB, 3900MiB, 2G (K/M/G = 1000^n, "
            "KiB/MiB/GiB = 1024^n)",
        ),
    ] = None,
    target_bpw: Annotated[
        float | None,
        typer.Option(
            "--target-bpw", metavar="BPW", help="bits per weight of the tensor data, as llama-quantize"
        ),
    ] = None,
    imatrix: Annotated[
        str | None, typer.Option("--imatrix", help="importance matrix (also given to apply)")
    ] = None,
    extends: Annotated[
        str | None,
        typer.Option("--extends", metavar="RECIPE", help="keep this recipe's explicit rules; tune the rest"),
    ] = None,
    pin: Annotated[
        Path | None,
        typer.Option("--pin", metavar="RULES.yaml", help="rules whose tensors keep their types (counted in)"),
    ] = None,
    types: Annotated[
        str | None, typer.Option("--types", metavar="LIST", help="comma-separated candidate types")
    ] = None,
    budget: Annotated[
        list[str] | None,
        typer.Option(
            "--budget",
            metavar="REGEX=SIZE",
            help="a separate byte budget for the tensors matching REGEX (repeatable), e.g. 'ffn_.*_exps=20GB'",
        ),
    ] = None,
    measurement: Annotated[
        Path | None,
        typer.Option("--measurement", help="a measurement JSON (default: the cached one, or measure)"),
    ] = None,
    uncalibrated: Annotated[
        bool, typer.Option("--uncalibrated", help="ignore a cached calibration (rank by weight error only)")
    ] = False,
    threads: Annotated[int | None, typer.Option("--threads", "-t", min=1, help="cores for measuring")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write the tuned recipe here (default: stdout)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar and no summary")] = False,
) -> None:
    """Choose the type of every tensor for a size budget: the lowest predicted loss whose output file
    fits, written as a readable recipe (`recipe apply TUNED.yaml MODEL` then writes that file).

    Uses the cached `recipe measure` of the model (measuring first when there is none) and its
    calibration when `recipe measure --calibrate` made one.
    """
    from .cli import _file_inputs, _refuse_clobber, parse_size
    from .executor.errors import ExecutorError
    from .measure import MeasureError, MeasureInterrupted
    from .tune import Budget, TuneError, tune_model

    if (target_size is None) == (target_bpw is None):
        raise _fail("give exactly one of --target-size and --target-bpw")
    if output is not None:
        inputs = _file_inputs(
            ("the input model", model),
            ("the imatrix", imatrix),
            ("the pin file", pin),
            ("the recipe", extends),
        )
        _refuse_clobber(inputs, [output])
    try:
        size = parse_size(target_size) if target_size is not None else None
        budgets = [Budget.parse(b, parse_size) for b in budget or []]
        if target_bpw is not None and not 0 < target_bpw <= 64:
            raise TuneError(f"--target-bpw {target_bpw}: expected a number of bits between 0 and 64")
        res = tune_model(
            model,
            target_size=size,
            target_bpw=target_bpw,
            imatrix=imatrix,
            extends=extends,
            pin=pin,
            types=[t.strip() for t in types.split(",") if t.strip()] if types else None,
            budgets=budgets,
            measurement=measurement,
            calibration=not uncalibrated,
            threads=threads,
            progress=False if quiet else None,
            command="recipe tune " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else None,
        )
    except MeasureInterrupted as exc:
        _err(str(exc))
        raise typer.Exit(130) from None
    except (TuneError, MeasureError, ExecutorError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    if output is None:
        sys.stdout.write(res.recipe_text)
    else:
        from .outputs import write_text_atomic

        write_text_atomic(output, res.recipe_text)
    if not quiet:
        t = res.plan.totals
        what = f"{res.target_size:,} bytes" if res.target_size is not None else f"{res.target_bpw} bpw"
        _err(
            f"tuned for {what}: predicted file {res.file_size:,} bytes, {t.bpw:.3f} bpw, "
            f"predicted loss {res.loss:.5g} ({'KL divergence' if res.loss_kind == 'kld' else 'uncalibrated'}); "
            f"{len(res.choices)} tensors tuned, {len(res.pinned)} pinned"
        )
        for pattern, used in res.group_bytes.items():
            _err(f"  budget {pattern}: {used:,} bytes")
        if output is not None:
            _err(
                f"  wrote {output}; next: recipe apply {output} {model}"
                + (f" --imatrix {imatrix}" if imatrix else "")
                + " -o OUT.gguf"
            )


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_cmd)
