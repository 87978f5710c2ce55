"""The ``recipe`` command: a thin typer layer over the Python API.

    recipe validate FILE [--strict] [--model MODEL]
    recipe plan RECIPE MODEL [--imatrix FILE] [--format table|json|markdown] [-o PLAN.json] [--heatmap F]
    recipe schema [recipe|plan] [-o FILE]
    recipe types
    recipe import [-o FILE] -- <llama-quantize options> TYPE
    recipe export RECIPE [--format llama-quantize|tensor-type-file|custom-q]
    recipe infer QUANT.gguf [-o R.yaml] [--source SRC.gguf]
    recipe diff A B [C ...] [--model MODEL] [--only-different] [--format table|markdown|json] [--heatmap F]
    recipe apply RECIPE_OR_PLAN MODEL -o OUT.gguf [--imatrix FILE] [--threads N] [--resume] [--force] ...
    recipe measure MODEL [--imatrix FILE] [--types LIST] [-o MEASURE.json] [--calibrate TEXT] [--fresh] ...
    recipe tune MODEL (--target-size SIZE | --target-bpw BPW) [--imatrix FILE] [--extends R] [--pin R] -o T.yaml
    recipe eval MODEL... --reference SOURCE.gguf --text FILE [--ctx 512] [--chunks N] [--format table|markdown|json]

Exit status: 0 on success, 1 when the input has errors (or warnings with ``--strict``), 2 on usage errors,
130 when ``recipe apply`` or ``recipe measure`` is interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from .diagnostics import Diagnostic, RecipeError, format_diagnostics, sort_diagnostics
from .outputs import Input, InputClobberError, check_outputs, write_text_atomic


class _Commands(typer.core.TyperGroup):
    """Every command: a file that cannot be read or written (an OSError, or an input that is not a
    regular file) that reaches here is one 'error:' line and exit status 1, never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        from .errors import GGUFRecipeError
        from .inputs import InputFileError, describe_os_error
        from .outputs import OutputPathError

        try:
            return super().invoke(ctx)
        except (OutputPathError, InputFileError) as exc:
            _err(f"error: {exc}")
        except GGUFRecipeError as exc:  # a refusal no command reported itself: still one line
            _err(f"error: {exc}")
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            _err(f"error: {where}{describe_os_error(exc)}")
        raise typer.Exit(1)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if isinstance(command, typer.core.TyperCommand):
            command.__class__ = _PlainHelpCommand
        return command

    def get_params(self, ctx: Any) -> Any:
        return _plain_params(super().get_params(ctx))


class _PlainHelpCommand(typer.core.TyperCommand):
    """Help without typer's ``<bool>``/``<str>``/``{ARG}`` tokens: usage names arguments as ``ARG`` and
    ``[ARG]`` (POSIX usage), flags show no value, other options a plain word (N, X, PATH, TEXT, [a|b])."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                name = param.display_name_raw + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def get_params(self, ctx: Any) -> Any:
        return _plain_params(super().get_params(ctx))


class _PlainArgument(typer.core.TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def _plain_params(params: list[Any]) -> list[Any]:
    for param in params:
        if isinstance(param, typer.core.TyperArgument):
            param.__class__ = _PlainArgument
            if param.metavar is None and param.name:
                param.metavar = param.name.upper()
        elif isinstance(param, typer.core.TyperOption) and param.metavar is None:
            param.metavar = _value_word(param)
    return params


def _value_word(option: typer.core.TyperOption) -> str:
    if option.is_flag:
        return ""
    desc = option.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices or ()) + "]"
    if desc.is_path:
        return "PATH"
    number = desc.ranged_type_name if desc.is_ranged else option.bare_type()
    return {"int": "N", "float": "X"}.get(number, "TEXT")


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"gguf-recipe {__version__}")
        raise typer.Exit(0)


app = typer.Typer(
    cls=_Commands,
    name="recipe",
    help="Declarative per-tensor quantization recipes for GGUF models: validate, plan, apply, import, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the version and exit", is_eager=True, callback=_version_callback
        ),
    ] = False,
) -> None:
    """Declarative per-tensor quantization recipes for GGUF models: validate, plan, apply, import, export."""


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _refuse_clobber(inputs: list[Input], outputs: list[Path]) -> None:
    """Exit 1 with one message when an output of the command is one of its inputs."""
    try:
        check_outputs(inputs, outputs)
    except InputClobberError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None


def _file_inputs(*inputs: tuple[str, str | Path | None]) -> list[Input]:
    """The ``(what, path)`` pairs that name existing files (built-in recipe names are not files)."""
    return [(what, p) for what, p in inputs if p is not None and Path(p).is_file()]


def _print_diagnostics(diags: list[Diagnostic]) -> None:
    if diags:
        _err(format_diagnostics(diags))


def _summary(diags: list[Diagnostic]) -> str:
    ne = sum(1 for d in diags if d.is_error)
    nw = len(diags) - ne
    parts = []
    if ne:
        parts.append(f"{ne} error{'s' if ne != 1 else ''}")
    if nw:
        parts.append(f"{nw} warning{'s' if nw != 1 else ''}")
    return "Found " + " and ".join(parts) + "."


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for d in diags:
        key = (d.file, d.line, d.col, d.severity, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _recipe_path(name_or_path: str) -> str | Path:
    """A file path, or the file of a built-in name such as llama.cpp/Q4_K_M."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    from .recipes import resolve

    try:
        return resolve(name_or_path)
    except FileNotFoundError as exc:
        raise RecipeError(Diagnostic(str(exc), "error", name_or_path, code="R001")) from None


def validate_file(path: str, *, model: str | None = None, imatrix: str | None = None) -> list[Diagnostic]:
    """Every diagnostic for a recipe file (and, with a model, those that need the model)."""
    from .recipe.loader import check_recipe

    try:
        source = _recipe_path(path)
    except RecipeError as exc:
        return exc.diagnostics
    lr, diags = check_recipe(source)
    if lr is None or any(d.is_error for d in diags):
        return diags
    if lr.recipe.extends is not None:
        from .compiler import load_recipe_chain
        from .recipes import resolve

        try:  # the whole chain: what it extends, at any depth, loads and does not loop
            load_recipe_chain(source)
            parent = resolve(lr.recipe.extends, relative_to=source if isinstance(source, Path) else None)
        except RecipeError as exc:
            return diags + list(exc.diagnostics)
        except FileNotFoundError as exc:
            diags.append(lr.diagnostic(("extends",), f"{exc}", code="R110"))
            return diags
        if Path(parent).resolve() != Path(source).resolve():
            _, pdiags = check_recipe(parent)
            diags += pdiags
    if model is not None and not any(d.is_error for d in diags):
        from .compiler import compile_plan

        try:
            result = compile_plan(source, model, imatrix=imatrix)
        except RecipeError as exc:
            return diags + list(exc.diagnostics)
        diags += result.diagnostics  # linted against the model too
    return _dedupe(diags)


def _ignore_option_help() -> str:
    return (
        "silence warnings with this code or name (repeatable), e.g. L302 or never-applies; see `recipe codes`"
    )


IgnoreOpt = Annotated[list[str] | None, typer.Option("--ignore", metavar="CODE", help=_ignore_option_help())]


def _ignored(codes: list[str] | None) -> list[str]:
    """The --ignore values, checked: an unknown code is a usage error (exit 2)."""
    from .diagnostics import CODES

    known = set(CODES) | set(CODES.values())
    for c in codes or []:
        if c.upper() not in known and c.lower() not in known:
            _err(f"error: --ignore {c}: no such diagnostic code (`recipe codes` lists them)")
            raise typer.Exit(2)
    return list(codes or [])


class DiagnosticFormat(str, Enum):
    text = "text"
    json = "json"


@app.command()
def validate(
    file: Annotated[str, typer.Argument(help="recipe file (YAML or JSON) or built-in name")],
    strict: Annotated[bool, typer.Option("--strict", help="treat warnings as errors")] = False,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="also check the recipe against this GGUF model's header"),
    ] = None,
    imatrix: Annotated[
        str | None, typer.Option("--imatrix", help="an importance matrix will be used")
    ] = None,
    ignore: IgnoreOpt = None,
    fmt: Annotated[
        DiagnosticFormat, typer.Option("--format", "-f", help="diagnostics as text (stderr) or JSON (stdout)")
    ] = DiagnosticFormat.text,
) -> None:
    """Check a recipe: syntax, keys, types, regexes, layer selectors (and, with --model, the rules' effect)."""
    from .diagnostics import without_ignored

    ignored = _ignored(ignore)
    diags = sort_diagnostics(without_ignored(validate_file(file, model=model, imatrix=imatrix), ignored))
    if fmt is DiagnosticFormat.json:
        typer.echo(json.dumps([d.to_json() for d in diags], indent=2))
        if any(d.is_error for d in diags) or (strict and diags):
            raise typer.Exit(1)
        return
    _print_diagnostics(diags)
    errors = any(d.is_error for d in diags)
    if errors or (strict and diags):
        _err(_summary(diags) + (" (--strict: warnings are errors)" if strict and not errors else ""))
        raise typer.Exit(1)
    if diags:
        _err(_summary(diags))
    typer.echo(f"{file}: ok")


class Format(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


@app.command()
def plan(
    recipe: Annotated[str, typer.Argument(help="recipe file or built-in name (e.g. llama.cpp/Q4_K_M)")],
    model: Annotated[str, typer.Argument(help="GGUF model (any file of a -0000k-of-0000n split)")],
    imatrix: Annotated[
        str | None, typer.Option("--imatrix", help="importance matrix file that will be used")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the plan JSON here")] = None,
    strict_fallbacks: Annotated[
        bool, typer.Option("--strict-fallbacks", help="a type the row length cannot hold is an error")
    ] = False,
    strict: Annotated[bool, typer.Option("--strict", help="treat warnings as errors")] = False,
    heatmap: Annotated[
        Path | None, typer.Option("--heatmap", help="also draw layer × tensor family → type (.svg or .png)")
    ] = None,
    ignore: IgnoreOpt = None,
) -> None:
    """Expand a recipe against a model header into a per-tensor plan (a dry run)."""
    from .cli_read import check_heatmap
    from .compiler import compile_plan
    from .diagnostics import without_ignored
    from .render import render_plan

    ignored = _ignored(ignore)
    check_heatmap(heatmap)
    outputs = [p for p in (output, heatmap) if p is not None]
    if outputs:
        inputs = _file_inputs(("the recipe", recipe), ("the input model", model), ("the imatrix", imatrix))
        _refuse_clobber(inputs, outputs)
    try:
        source = _recipe_path(recipe)
        result = compile_plan(source, model, imatrix=imatrix, strict_fallbacks=strict_fallbacks)
    except RecipeError as exc:
        _print_diagnostics(list(exc.diagnostics))
        raise typer.Exit(1) from None
    except FileNotFoundError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    except ValueError as exc:  # unreadable model header
        _err(f"{model}: error: {exc}")
        raise typer.Exit(1) from None
    diags = without_ignored(_dedupe(list(result.diagnostics)), ignored)  # compile_plan has linted it
    _print_diagnostics(diags)
    if any(d.is_error for d in diags) or (strict and diags):
        _err(_summary(diags))
        raise typer.Exit(1)
    if output is not None:
        result.plan.save(output)  # atomic
    sys.stdout.write(render_plan(result.plan, fmt.value))
    if heatmap is not None:
        from .cli_read import write_heatmap
        from .read.views import view_of_plan

        write_heatmap([view_of_plan(result.plan)], heatmap)


class SchemaKind(str, Enum):
    recipe = "recipe"
    plan = "plan"


def schema_text(kind: str = "recipe") -> str:
    """The JSON Schema text that schema/<kind>.schema.json holds."""
    if kind == "plan":
        from .plan import plan_json_schema

        data: dict[str, Any] = plan_json_schema()
        data.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
        data.setdefault("title", "gguf-recipe plan")
    else:
        from .recipe.model import recipe_json_schema

        data = recipe_json_schema()
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


@app.command()
def schema(
    kind: Annotated[SchemaKind, typer.Argument(help="which schema")] = SchemaKind.recipe,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to this file")] = None,
) -> None:
    """Print the JSON Schema of recipe files (or of plans)."""
    text = schema_text(kind.value)
    if output is not None:
        write_text_atomic(output, text)
    else:
        sys.stdout.write(text)


def types_table() -> list[dict[str, Any]]:
    """Every ggml type: block size, bytes per block, bits per weight, and what gguf-recipe can do with it."""
    from gguf import GGMLQuantizationType

    from .llamacpp import TYPES_NEEDING_IMATRIX
    from .quants import implemented_types
    from .quants.registry import SPECS
    from .recipe.typenames import ggml_type_info

    implemented = set(implemented_types())
    rows = []
    for t in GGMLQuantizationType:
        info = ggml_type_info(t)
        spec = SPECS.get(t)
        rows.append(
            {
                "name": info.name,
                "id": int(t),
                "block_size": info.block_size,
                "type_size": info.type_size,
                "bpw": round(info.bpw, 4),
                "in_recipes": spec is not None,
                "can_produce": t in implemented,
                "requires_imatrix": t in TYPES_NEEDING_IMATRIX or bool(spec and spec.requires_imatrix),
            }
        )
    return rows


@app.command("types")
def types_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List every ggml type with its block size, bits per weight and whether gguf-recipe can produce it."""
    rows = types_table()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    head = ["type", "id", "block", "bytes", "bpw", "recipes", "produce", "imatrix"]
    cells = [
        [
            r["name"],
            str(r["id"]),
            str(r["block_size"]),
            str(r["type_size"]),
            f"{r['bpw']:.4g}",
            "yes" if r["in_recipes"] else "-",
            "yes" if r["can_produce"] else "-",
            "needed" if r["requires_imatrix"] else "",
        ]
        for r in rows
    ]
    from .render import text_table

    lines = text_table(head, cells)
    typer.echo("\n".join([lines[0], *lines[2:]]))
    typer.echo(
        "\nrecipes: usable in a recipe (a type llama.cpp quantizes weights to); "
        "produce: this build of gguf-recipe has its quantizer; imatrix: llama.cpp refuses it without one "
        "(except for token_embd and output; q2_K needs one in the Q2_K_S mix)"
    )


@app.command("codes")
def codes_cmd() -> None:
    """List the diagnostic codes (R: the recipe file, C: compiling it for a model, L: what its rules do
    to the model); warnings can be silenced with --ignore CODE."""
    from .diagnostics import CODES

    for code, name in CODES.items():
        typer.echo(f"{code}  {name}")


@app.command(
    "import",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    options_metavar="[OPTIONS] -- [LLAMA_QUANTIZE_OPTIONS]... TYPE",
)
def import_cmd(
    ctx: typer.Context,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the recipe here")] = None,
    ik_to_mainline: Annotated[
        bool, typer.Option("--ik-to-mainline", help="replace ik_llama.cpp-only types by mainline ones")
    ] = False,
    name: Annotated[str | None, typer.Option("--name", help="recipe name")] = None,
) -> None:
    """Turn llama-quantize options into a recipe:  recipe import -o r.yaml -- --tensor-type attn_v=q8_0 Q4_K_M

    Everything after ``--`` is read as llama-quantize's own command line: its options, then (optional)
    IN.gguf [OUT.gguf], then TYPE (e.g. Q4_K_M or 15) [THREADS]. Options: --tensor-type,
    --tensor-type-file, --output-tensor-type, --token-embedding-type, --leave-output-tensor, --pure,
    --prune-layers, --override-kv, --imatrix, --include-weights, --exclude-weights, and ik_llama.cpp's
    --custom-q; --allow-requantize, --keep-split, --dry-run and --max-buffer-size are accepted and
    ignored.
    """
    from .interop import InteropError, import_llama_quantize

    argv = list(ctx.args)
    if not argv:
        _err(
            "error: missing llama-quantize options and TYPE, e.g.: recipe import -- --tensor-type attn_v=q8_0 Q4_K_M"
        )
        raise typer.Exit(2)
    try:
        text = import_llama_quantize(argv, ik_to_mainline=ik_to_mainline, name=name)
    except InteropError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    if output is not None:
        write_text_atomic(output, text)
        _err(f"wrote {output}")
    else:
        sys.stdout.write(text)


class ExportFormat(str, Enum):
    llama_quantize = "llama-quantize"
    tensor_type_file = "tensor-type-file"
    custom_q = "custom-q"


@app.command("export")
def export_cmd(
    recipe: Annotated[str, typer.Argument(help="recipe file or built-in name")],
    n_layers: Annotated[
        int | None,
        typer.Option(
            "--layers", help="the model's block count (needed for fractional/negative layer selectors)"
        ),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="input model path to put in the command")
    ] = "MODEL.gguf",
    out: Annotated[str, typer.Option("--out", help="output path to put in the command")] = "OUTPUT.gguf",
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="llama-quantize: the command line; tensor-type-file: mainline's --tensor-type-file "
            "contents; custom-q: ik_llama.cpp's --custom-q string",
        ),
    ] = ExportFormat.llama_quantize,
    rules_file: Annotated[
        Path | None,
        typer.Option("--rules-file", help="with --format tensor-type-file: write the file here"),
    ] = None,
) -> None:
    """Print the llama-quantize command line (or rules file, or ik_llama.cpp --custom-q) of a recipe."""
    from .interop import InteropError, export_recipe
    from .recipe.loader import load

    try:
        source = _recipe_path(recipe)
        lr = load(source)
        exp = export_recipe(lr.recipe, base_dir=lr.base_dir, n_layers=n_layers, target=fmt.value)
    except RecipeError as exc:
        _print_diagnostics(exc.diagnostics)
        raise typer.Exit(1) from None
    except InteropError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    for n in exp.notes:
        _err(f"note: {n}")
    if fmt is ExportFormat.llama_quantize:
        typer.echo(shlex.join(exp.argv(model, out)))
    elif fmt is ExportFormat.tensor_type_file:
        name = str(rules_file) if rules_file is not None else "RULES.txt"
        if rules_file is not None:
            rules_file.write_text(exp.tensor_type_file(), encoding="utf-8")
            _err(f"wrote {rules_file}")
        else:
            sys.stdout.write(exp.tensor_type_file())
        _err("command: " + shlex.join(exp.argv(model, out, rules_file=name)))
    else:
        typer.echo(exp.custom_q())
        _err("command (ik_llama.cpp): " + shlex.join(exp.argv(model, out)))


# --- apply --------------------------------------------------------------------------------------

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "TIB": 1 << 40,
}


def parse_size(text: str) -> int:
    """``2G`` -> 2_000_000_000 bytes. K/M/G/T are powers of 1000 as in llama-gguf-split's
    ``--split-max-size``; KiB/MiB/GiB/TiB are powers of 1024; a bare number is bytes."""
    t = text.strip().replace(" ", "").upper()
    num = t.rstrip("KMGTIB")
    unit = t[len(num) :]
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 2G, 500M, 4GiB or a number of bytes)") from None
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit in {text!r} (use K, M, G, T, KiB, MiB, GiB, TiB)")
    if not -(2**63) < value * _SIZE_UNITS[unit] < 2**63:  # also NaN and infinities
        raise ValueError(f"not a size: {text!r} (e.g. 2G, 500M, 4GiB or a number of bytes)")
    n = int(value * _SIZE_UNITS[unit])
    if n < 1:
        raise ValueError(f"size must be positive: {text!r}")
    return n


_MAX_PLAN_BYTES = 1 << 28  # a plan of a 1000-layer model is a few MB


def _load_plan_file(arg: str) -> Any:
    """The :class:`~gguf_recipe.plan.Plan` in ``arg`` when it is a plan JSON file (told by content:
    a JSON object with ``fingerprints`` and ``tensors``), else None (a recipe file or name)."""
    p = Path(arg)
    if not p.is_file() or p.stat().st_size > _MAX_PLAN_BYTES:  # (not read whole: it may be a model)
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not (isinstance(data, dict) and "fingerprints" in data and "tensors" in data):
        return None
    from pydantic import ValidationError

    from .plan import Plan

    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise ValueError(
            f"{arg}: looks like a plan but is not a valid one ({where}: {first.get('msg')}); "
            "make it again with `recipe plan RECIPE MODEL -o PLAN.json`"
        ) from None


def _recipe_fingerprint_of_plan(plan: Any, recipe: str | None) -> str | None:
    """The fingerprint of the recipe the plan says it was made from, as it is now (to refuse a plan
    made from an older recipe): ``--recipe`` when given; else a built-in recipe of the plan's name;
    else the plan's own recipe text when it extends nothing or only built-ins. None: cannot tell."""
    import hashlib

    from .compiler import load_recipe_chain
    from .recipes import is_builtin_name

    def fp(source: str | Path) -> str:
        chain = load_recipe_chain(source)
        return hashlib.sha256("\0".join(lr.text for lr in chain).encode()).hexdigest()

    if recipe is not None:
        return fp(_recipe_path(recipe))  # errors are the user's to see
    try:
        if is_builtin_name(plan.recipe_name):
            return fp(plan.recipe_name)
        text = plan.recipe_text
        if "\n" not in text:
            return None
        from .recipe.loader import load

        extends = load(text).recipe.extends
        if extends is None or is_builtin_name(str(extends)):
            return fp(text)
    except (RecipeError, OSError):
        pass
    return None


@app.command("apply")
def apply_cmd(
    recipe_or_plan: Annotated[
        str,
        typer.Argument(
            metavar="RECIPE_OR_PLAN",
            help="recipe file, built-in name (e.g. llama.cpp/Q4_K_M) or a plan JSON from `recipe plan -o`",
        ),
    ],
    model: Annotated[
        str, typer.Argument(metavar="MODEL", help="source GGUF model (any file of a -0000k-of-0000n split)")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="the GGUF file to write")],
    imatrix: Annotated[
        str | None, typer.Option("--imatrix", help="importance matrix (llama.cpp .dat or GGUF imatrix)")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            "-t",
            min=1,
            help="cores to quantize on, one worker process each (default: every core)",
        ),
    ] = None,
    chunk_values: Annotated[
        int | None,
        typer.Option(
            "--chunk-values", min=1, help="values per read/quantize chunk (bounds peak memory; default 4Mi)"
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue an interrupted run from its checkpoint")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="apply a plan even if the model, recipe or imatrix changed")
    ] = False,
    allow_requantize: Annotated[
        bool,
        typer.Option(
            "--allow-requantize", help="quantize tensors that are already quantized (loses quality)"
        ),
    ] = False,
    max_shard_size: Annotated[
        str | None,
        typer.Option(
            "--max-shard-size",
            metavar="SIZE",
            help="split the output into files of at most SIZE each, header included (e.g. 2G = 2·10⁹ bytes, "
            "500M, 4GiB); a tensor larger than SIZE gets a file of its own",
        ),
    ] = None,
    max_shard_tensors: Annotated[
        int | None,
        typer.Option("--max-shard-tensors", min=1, help="split the output into shards of at most N tensors"),
    ] = None,
    strict_fallbacks: Annotated[
        bool, typer.Option("--strict-fallbacks", help="a type the row length cannot hold is an error")
    ] = False,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="with a plan: the recipe it was made from, to refuse the plan if it changed since",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="no progress bar and no summary (warnings and errors only)")
    ] = False,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            metavar="ADDRESS",
            help="quantize on a Dask cluster: its scheduler (tcp://host:8786), or local / local:N to start "
            "N local workers; the workers read MODEL by the same path (a shared filesystem)",
        ),
    ] = None,
    ignore: IgnoreOpt = None,
) -> None:
    """Quantize MODEL as a recipe (compiled on the fly) or a saved plan says, and write OUT.gguf.

    The output appears only when complete. On Ctrl-C the work done so far is kept beside the output:
    run the same command with --resume to continue. A plan made for another model, recipe or imatrix
    is refused unless --force.
    """
    shard_bytes: int | None = None
    if max_shard_size is not None:
        try:
            shard_bytes = parse_size(max_shard_size)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--max-shard-size'") from None
    if cluster is not None:
        from .executor.cluster import parse_cluster_address

        try:
            parse_cluster_address(cluster)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--cluster'") from None
        if threads is not None:
            raise typer.BadParameter(
                "--threads is for local runs; with --cluster the workers' threads count (local:N starts N)",
                param_hint="'--threads'",
            )
    try:
        _apply(
            recipe_or_plan,
            model,
            output,
            imatrix=imatrix,
            threads=threads,
            chunk_values=chunk_values,
            resume=resume,
            force=force,
            allow_requantize=allow_requantize,
            max_shard_bytes=shard_bytes,
            max_shard_tensors=max_shard_tensors,
            strict_fallbacks=strict_fallbacks,
            recipe=recipe,
            quiet=quiet,
            cluster=cluster,
            ignored=_ignored(ignore),
        )
    except KeyboardInterrupt:
        _err(f"interrupted; nothing was written at {output}.")
        raise typer.Exit(130) from None


def _apply(
    recipe_or_plan: str,
    model: str,
    output: Path,
    *,
    imatrix: str | None,
    threads: int | None,
    chunk_values: int | None,
    resume: bool,
    force: bool,
    allow_requantize: bool,
    max_shard_bytes: int | None,
    max_shard_tensors: int | None,
    strict_fallbacks: bool,
    recipe: str | None,
    quiet: bool,
    cluster: str | None = None,
    ignored: list[str] | None = None,
) -> None:
    import warnings

    from .compiler import compile_plan
    from .diagnostics import without_ignored
    from .executor import DEFAULT_CHUNK_VALUES, ApplyInterrupted, ExecutorError, StalePlanError, apply_plan

    def fail(msg: str) -> typer.Exit:
        _err(f"error: {msg}")
        return typer.Exit(1)

    from .inputs import InputFileError, check_input_file

    try:
        check_input_file(model, "the input model")
        if imatrix is not None:
            check_input_file(imatrix, "the imatrix")
    except InputFileError as exc:
        raise fail(str(exc)) from None
    try:
        plan = _load_plan_file(recipe_or_plan)
    except ValueError as exc:
        raise fail(str(exc)) from None
    # apply_plan checks every file it writes (shards, temp files, checkpoint, lock) against these,
    # the model and the imatrix; the early check here spares compiling a recipe to be refused
    inputs = _file_inputs(
        ("the plan" if plan is not None else "the recipe", recipe_or_plan), ("the recipe", recipe)
    )
    _refuse_clobber([*inputs, *_file_inputs(("the input model", model), ("the imatrix", imatrix))], [output])

    recipe_fp: str | None = None
    recipe_file: str | Path | None = None  # the plan's recipe, to check the plan's decisions against
    if plan is not None:
        if strict_fallbacks and plan.totals.n_fallbacks:
            raise fail(
                f"--strict-fallbacks: the plan has {plan.totals.n_fallbacks} fallback(s); "
                "re-plan with --strict-fallbacks to see them"
            )
        try:
            recipe_fp = _recipe_fingerprint_of_plan(plan, recipe)
        except RecipeError as exc:
            _print_diagnostics(list(exc.diagnostics))
            raise typer.Exit(1) from None
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None
        recipe_file = _recipe_path(recipe) if recipe is not None else None
        if recipe_fp is None and not quiet:
            _err(
                f"note: cannot find the recipe {plan.recipe_name!r} the plan was made from; "
                "only the model and imatrix are checked (pass --recipe FILE to check it too)"
            )
    else:
        if recipe is not None:
            raise fail("--recipe is for plans; RECIPE_OR_PLAN is already a recipe")
        try:
            source = _recipe_path(recipe_or_plan)
            result = compile_plan(source, model, imatrix=imatrix, strict_fallbacks=strict_fallbacks)
        except RecipeError as exc:
            _print_diagnostics(list(exc.diagnostics))
            raise typer.Exit(1) from None
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None
        except ValueError as exc:  # unreadable model header
            raise fail(f"{model}: {exc}") from None
        diags = sort_diagnostics(
            without_ignored(_dedupe(list(result.diagnostics)), ignored or [])  # compile_plan has linted it
        )
        _print_diagnostics(diags)
        if any(d.is_error for d in diags):
            _err(_summary(diags) + " Nothing was written.")
            raise typer.Exit(1)
        plan = result.plan
        recipe_file = source
        if not quiet:
            t = plan.totals
            _err(
                f"plan: {plan.recipe_name}: {t.n_tensors} tensors, {t.bpw:.3f} bpw, "
                f"{t.n_fallbacks} fallback(s)"
            )

    if Path(output).is_file() and not resume:
        _err(f"note: {output} exists; it will be replaced once the new file is complete")

    def show(message: Warning | str, *args: Any, **kwargs: Any) -> None:
        _err(f"warning: {message}")

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            res = apply_plan(
                plan,
                model,
                output,
                imatrix=imatrix,
                threads=threads,
                chunk_values=chunk_values or DEFAULT_CHUNK_VALUES,
                resume=resume,
                force=force,
                allow_requantize=allow_requantize,
                progress=False if quiet else None,
                max_shard_bytes=max_shard_bytes,
                max_shard_tensors=max_shard_tensors,
                recipe_fingerprint=recipe_fp,
                recipe=recipe_file,
                inputs=inputs,
                cluster=cluster,
            )
    except ApplyInterrupted as exc:
        _err(str(exc))
        if "kept" in str(exc):
            _err("hint: run the same command with --resume to continue where it stopped")
        raise typer.Exit(130) from None
    except StalePlanError as exc:
        _err(f"error: {exc}")
        _err("hint: make a new plan with `recipe plan RECIPE MODEL -o PLAN.json`, or pass --force")
        raise typer.Exit(1) from None
    except ExecutorError as exc:
        raise fail(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    if quiet:
        for w in res.warnings:
            _err(f"warning: {w}")
    else:
        typer.echo(res.summary())


# --- measure ------------------------------------------------------------------------------------


@app.command("measure")
def measure_cmd(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="source GGUF model (F16/BF16/F32)")],
    imatrix: Annotated[
        str | None,
        typer.Option("--imatrix", help="importance matrix: weight the error (and quantize) as apply does"),
    ] = None,
    types: Annotated[
        str | None,
        typer.Option(
            "--types",
            metavar="LIST",
            help="comma-separated candidate types (default: q8_0 ... iq4_xs; with --imatrix also iq3_s ... iq1_m)",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="the measurement JSON (default: the cache that `recipe tune` reads)"
        ),
    ] = None,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", min=1, help="rows sampled per tensor at most (default 256)")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", "-t", min=1, help="worker processes (default: every core)"),
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="measure again from scratch instead of continuing or reusing")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar and no summary")] = False,
    calibrate: Annotated[
        Path | None,
        typer.Option(
            "--calibrate",
            metavar="TEXT",
            help="also measure with llama.cpp how much each tensor moves the output (KL divergence on this "
            "text file); `recipe tune` then ranks tensors by it (needs gguf-recipe[eval])",
        ),
    ] = None,
    calibrate_ctx: Annotated[int, typer.Option("--calibrate-ctx", min=16, help="tokens per chunk")] = 512,
    calibrate_chunks: Annotated[
        int, typer.Option("--calibrate-chunks", min=1, help="chunks of the text evaluated per probe")
    ] = 1,
    calibrate_stride: Annotated[
        int,
        typer.Option(
            "--calibrate-stride", min=1, help="probe every k-th block only; tune interpolates the others"
        ),
    ] = 1,
) -> None:
    """Measure every quantizable tensor's quantization error in every candidate type (for `recipe tune`).

    A deterministic sample of rows of each tensor is quantized and dequantized in each type; the
    squared error (imatrix-weighted with --imatrix) is scaled to the whole tensor and saved with the
    bytes each type takes. An interrupted run continues where it stopped; a finished one is reused.
    """
    import time

    from .measure import DEFAULT_MAX_ROWS, MeasureError, MeasureInterrupted, measure_model

    t0 = time.monotonic()
    try:
        m = measure_model(
            model,
            imatrix=imatrix,
            types=types,
            max_rows=max_rows or DEFAULT_MAX_ROWS,
            threads=threads,
            out=output,
            resume=not fresh,
            progress=False if quiet else None,
        )
    except MeasureInterrupted as exc:
        _err(str(exc))
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        _err("interrupted; nothing new was measured.")
        raise typer.Exit(130) from None
    except (MeasureError, OSError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    if quiet:
        if calibrate is not None:
            from .cli_tune import run_calibration

            run_calibration(
                m,
                model,
                imatrix,
                calibrate,
                calibrate_ctx,
                calibrate_chunks,
                calibrate_stride,
                threads,
                quiet,
            )
        return
    for note in m.notes:
        _err(f"note: {note}")
    exact = sum(1 for t in m.tensors.values() if t.sampled_rows == t.n_rows)
    typer.echo(
        f"measured {len(m.tensors)} tensors x {len(m.types)} types ({m.skipped} not quantizable, skipped); "
        f"metric: {m.metric}"
    )
    typer.echo(
        f"  sampling  at most {m.sampling.max_rows} rows and {m.sampling.max_values} values per tensor "
        f"(seed {m.sampling.seed}); {exact} tensors measured on every row"
    )
    typer.echo(f"  time      {m.seconds:.1f} s in all, {time.monotonic() - t0:.1f} s this run")
    typer.echo(f"  saved     {m.path}")
    if calibrate is not None:
        from .cli_tune import run_calibration

        run_calibration(
            m, model, imatrix, calibrate, calibrate_ctx, calibrate_chunks, calibrate_stride, threads, quiet
        )


@app.command("eval")
def eval_cmd(
    models: Annotated[list[str], typer.Argument(metavar="MODEL", help="GGUF models to evaluate")],
    reference: Annotated[
        str, typer.Option("--reference", "-r", help="the model to compare with (e.g. the F16 source)")
    ],
    text: Annotated[str, typer.Option("--text", help="text file to evaluate on (UTF-8)")],
    ctx: Annotated[int, typer.Option("--ctx", "-c", min=4, help="tokens per chunk")] = 512,
    chunks: Annotated[
        int | None, typer.Option("--chunks", min=1, help="evaluate the first N chunks (default: all)")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.table,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", min=1, help="llama.cpp threads (default: every core)")
    ] = None,
) -> None:
    r"""Perplexity, KL divergence and same-top-token rate of each MODEL against the reference, as
    llama.cpp's `llama-perplexity --kl-divergence` computes them (needs `pip install 'gguf-recipe\[eval]'`).

    The reference's log-probabilities are computed once per text, context and chunk count, and kept in
    $XDG_CACHE_HOME/gguf-recipe/eval (~/.cache/...). Several models give one comparison table.
    """
    from .evaluate import EvalError, compute_reference, evaluate, read_text, render_comparison

    def progress(label: str) -> Any:
        if not sys.stderr.isatty():
            return None

        def show(done: int, total: int) -> None:
            sys.stderr.write(f"\r{label}: chunk {done}/{total}" + ("\n" if done == total else ""))
            sys.stderr.flush()

        return show

    try:
        data = read_text(text)
        ref = compute_reference(
            reference, data, n_ctx=ctx, n_chunks=chunks, threads=threads, progress=progress("reference")
        )
        results = [evaluate(m, ref, data, threads=threads, progress=progress(Path(m).name)) for m in models]
    except (EvalError, OSError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None
    sys.stdout.write(render_comparison(results, fmt.value))


# recipe infer / diff and recipe tune live in their own modules
from .cli_read import register as _register_read  # noqa: E402
from .cli_tune import register as _register_tune  # noqa: E402

_register_read(app)
_register_tune(app)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
