"""Inputs that are not what they claim (issue 12, sections 2 and 3): each is refused fast with one
message that names it, never a traceback, a hang or an endless read."""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gguf_recipe.cli import app
from gguf_recipe.compiler import compile_plan
from gguf_recipe.diagnostics import RecipeError
from gguf_recipe.executor import ApplyInterrupted, ImatrixError, SourceFormatError, apply_plan, load_imatrix
from gguf_recipe.executor import source as source_mod
from gguf_recipe.inputs import InputFileError, check_input_file, open_input, read_input_bytes
from gguf_recipe.model import read_model
from gguf_recipe.model.header import GGUFReadError
from gguf_recipe.recipe import patterns
from gguf_recipe.recipe.loader import check_recipe
from gguf_recipe.recipe.source_map import MAX_RECIPE_BYTES
from helpers.executor import llama_tensors, make_plan, write_model

runner = CliRunner()


def cli(*args: str | Path) -> tuple[int, str]:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    return r.exit_code, r.stderr


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "m.gguf", llama_tensors(1))


@pytest.fixture
def odd_files(tmp_path: Path) -> dict[str, Path]:
    """A folder, a FIFO with no writer, a character device, a symbolic link loop, a missing file."""
    folder = tmp_path / "folder"
    folder.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    return {
        "a folder": folder,
        "a FIFO (named pipe)": fifo,
        "a character device": Path("/dev/zero"),
        "a symbolic link loop": tmp_path / "loop1",
        "no such file": tmp_path / "missing",
    }


KINDS = ["a folder", "a FIFO (named pipe)", "a character device", "a symbolic link loop", "no such file"]


def expected(kind: str) -> str:
    return kind if kind in ("no such file",) else f"is {kind}"


# ------------------------------------------------------------------------------------ input files


@pytest.mark.parametrize("kind", KINDS)
def test_input_helpers_name_what_the_path_is(odd_files: dict[str, Path], kind: str) -> None:
    p = odd_files[kind]
    t0 = time.monotonic()
    for call in (
        lambda: check_input_file(p, "the recipe"),
        lambda: read_input_bytes(p, "the recipe"),
        lambda: open_input(p, "the recipe"),
    ):
        with pytest.raises(InputFileError, match=re.escape(f"the recipe {p}: {expected(kind)}")):
            call()
    assert time.monotonic() - t0 < 5  # no endless read of /dev/zero, no blocking open of the FIFO


def test_size_cap(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_bytes(b"#" * 100)
    assert read_input_bytes(p, max_bytes=100) == b"#" * 100
    with pytest.raises(InputFileError, match="101 bytes is more than the 100 bytes allowed"):
        p.write_bytes(b"#" * 101)
        read_input_bytes(p, max_bytes=100)


@pytest.mark.parametrize("kind", KINDS)
def test_every_reader_refuses_odd_files(odd_files: dict[str, Path], model: Path, kind: str) -> None:
    p = odd_files[kind]
    want = expected(kind)
    with pytest.raises(ImatrixError, match=re.escape(f"the imatrix {p}: {want}")):
        load_imatrix(p)
    with pytest.raises(GGUFReadError, match=re.escape(f"{p}: {want}")):
        read_model(p)
    with pytest.raises(SourceFormatError, match=re.escape(f"{p}: {want}")):
        apply_plan(make_plan(model), p, model.with_name("o.gguf"), progress=False)
    _, diags = check_recipe(p)
    assert len(diags) == 1 and (want if kind != "no such file" else "file not found") in diags[0].message
    # the CLI: as a recipe, a model and an imatrix
    commands: list[list[str | Path]] = [
        ["validate", p],
        ["plan", p, model],
        ["plan", "llama.cpp/Q8_0", p],
        ["apply", "llama.cpp/Q8_0", p, "-o", model.with_name("o.gguf")],
        ["apply", "llama.cpp/Q8_0", model, "-o", model.with_name("o.gguf"), "--imatrix", p],
        ["plan", "llama.cpp/Q8_0", model, "--imatrix", p],
    ]
    for args in commands:
        code, err = cli(*args)
        assert code == 1, (args, err)
        assert (want in err or (kind == "no such file" and "not found" in err)) and str(p) in err, (args, err)
    assert not model.with_name("o.gguf").exists()


# ------------------------------------------------------------------------------------ recipes


def test_yaml_tags_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text('recipe: 1\nbase: q8_0\nname: !!python/object/apply:os.system ["echo hi"]\n')
    code, err = cli("validate", p)
    assert code == 1
    assert err.startswith(f"{p}:3:7: error[R103]: YAML tag '!!python/object/apply:os.system' is not allowed")


def test_alias_bomb_fails_fast(tmp_path: Path) -> None:
    lines = ["recipe: 1", "base: q8_0", "x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    assert p.stat().st_size < 600
    t0 = time.monotonic()
    code, err = cli("validate", p)
    assert code == 1 and "expands to more than 100000 values" in err
    assert time.monotonic() - t0 < 10


def test_oversized_recipe(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    p.write_text("recipe: 1\nbase: q8_0\n" + "#" * MAX_RECIPE_BYTES)
    code, err = cli("validate", p)
    assert code == 1 and "is more than the 1048576 bytes allowed" in err
    with pytest.raises(RecipeError, match="a recipe may have"):
        from gguf_recipe.recipe.loader import load

        load("recipe: 1\nbase: q8_0\n" + "#" * MAX_RECIPE_BYTES)


@pytest.mark.parametrize(
    "pattern, severity, words",
    [
        ("(a+)+$", "error", "nested quantifiers can take exponential time"),
        ("(.*)*x", "error", "nested quantifiers can take exponential time"),
        (r"(\d+\.?)+", "error", "nested quantifiers can take exponential time"),
        (r"(\d+\.)+", "warning", "nested quantifiers may take a long time"),
        ("[[:alpha:]]", "error", "possible nested set at position 1 (a POSIX class"),
    ],
)
def test_regex_lint(tmp_path: Path, pattern: str, severity: str, words: str) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(f"recipe: 1\nbase: q8_0\nrules:\n  - {{match: '{pattern}', type: q4_0}}\n")
    code, err = cli("validate", p, "--strict")
    assert code == 1
    assert f"{p}:4:" in err and f"{severity}[R106]: regex '{pattern}': {words}" in err
    assert "FutureWarning" not in err


def test_regex_work_is_bounded(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search that runs out of time is a compile error at the rule, naming the pattern and the name."""
    monkeypatch.setattr(patterns, "MATCH_TIMEOUT_S", 1e-9)
    patterns._CACHE.clear()
    p = tmp_path / "r.yaml"
    p.write_text("recipe: 1\nbase: q8_0\nrules:\n  - {match: '(x+x+)+y', type: q4_0}\n")
    slow = patterns.compile_pattern("(x+x+)+y")
    with pytest.raises(patterns.PatternTimeout, match="takes too long to match the tensor name 'x"):
        slow.search("x" * 5000)
    with pytest.raises(RecipeError) as exc:
        compile_plan(p, model)
    d = exc.value.diagnostics[0]
    assert (d.file, d.line) == (str(p), 4)
    assert "the regex '(x+x+)+y' takes too long to match the tensor name" in d.message
    patterns._CACHE.clear()


def test_metadata_integer_out_of_range(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("recipe: 1\nbase: q8_0\nmetadata:\n  general.x: {type: int, value: 99999999999999999999}\n")
    code, err = cli("validate", p)
    assert code == 1
    assert "metadata 'general.x': 99999999999999999999 does not fit a GGUF integer" in err


def test_extends_loop_and_non_recipe_name_the_extends(tmp_path: Path, model: Path) -> None:
    (tmp_path / "a.yaml").write_text("recipe: 1\nextends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("recipe: 1\nextends: a.yaml\n")
    passwd = tmp_path / "p.yaml"
    passwd.write_text("recipe: 1\nextends: /etc/passwd\n")
    for cmd in (["validate"], ["plan"]):
        code, err = cli(*cmd, tmp_path / "a.yaml", *([model] if cmd == ["plan"] else []))
        assert code == 1
        assert f"{tmp_path / 'b.yaml'}:2:10: error[R110]: extends 'a.yaml': loops back to" in err
        code, err = cli(*cmd, passwd, *([model] if cmd == ["plan"] else []))
        assert code == 1
        assert err.startswith(
            f"{passwd}:2:10: error[R110]: extends '/etc/passwd': /etc/passwd is not a valid recipe"
        )


# ------------------------------------------------------------------------------------ headers


def gguf_header(
    tensors: Sequence[tuple[str, Sequence[int], int]], kvs: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A GGUF v3 header (and no data): string key/values and tensor infos (name, shape, ggml type)."""

    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kv = [("general.architecture", "llama"), *kvs]
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for k, v in kv:
        out += s(k) + struct.pack("<I", 8) + s(v)
    for name, shape, t in tensors:
        out += s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", t, 0)
    return out + b"\0" * 64


@pytest.mark.parametrize(
    "tensors, words",
    [
        ([("w", [1 << 63, 1], 0)], "element count does not fit in 63 bits"),
        ([("w", [1 << 32, 1 << 32], 0)], "element count does not fit in 63 bits"),
        ([("w", [1] * 9, 0)], "has 9 dimensions (max 4)"),
        ([("w", [32, 1], 0), ("w", [32, 1], 0)], "duplicate tensor name 'w'"),
        ([("w", [33, 1], 8)], "row length 33 is not a multiple of Q8_0's block size 32"),
    ],
)
def test_plan_and_apply_refuse_the_same_headers(
    tmp_path: Path, tensors: list[tuple[str, list[int], int]], words: str
) -> None:
    h = tmp_path / "h.gguf"
    h.write_bytes(gguf_header(tensors))
    commands: list[list[str | Path]] = [
        ["plan", "llama.cpp/Q8_0", h],
        ["apply", "llama.cpp/Q8_0", h, "-o", tmp_path / "o.gguf"],
    ]
    for args in commands:
        code, err = cli(*args)
        assert code == 1, (args, err)
        assert words in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.gguf"]


def test_non_integer_hyperparameter_is_named(tmp_path: Path) -> None:
    h = tmp_path / "h.gguf"
    h.write_bytes(gguf_header([("blk.0.attn_q.weight", [32, 32], 1)], [("llama.block_count", "abc")]))
    code, err = cli("plan", "llama.cpp/Q4_K_M", h)
    assert code == 1
    assert "metadata llama.block_count must be an integer, found 'abc'" in err
    assert "invalid literal" not in err


# ------------------------------------------------------------------------------------ outputs


def test_text_outputs_into_missing_folders_make_them(tmp_path: Path, model: Path) -> None:
    commands: list[list[str | Path]] = [
        ["plan", "llama.cpp/Q8_0", model, "-o"],
        ["schema", "-o"],
        ["import", "-o"],
    ]
    for i, args in enumerate(commands):
        out = tmp_path / f"new{i}" / "deeper" / "x.out"
        extra = ["--", "Q4_K_M"] if args[0] == "import" else []
        code, err = cli(*args, out, *extra)
        assert code == 0, (args, err)
        assert out.stat().st_size > 0


@pytest.mark.parametrize("where", ["a file in the way", "a folder"])
def test_text_outputs_below_a_file_or_onto_a_folder(tmp_path: Path, model: Path, where: str) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "afile").write_bytes(b"mine")
    out = tmp_path / ("afile/x.json" if where == "a file in the way" else "dir")
    words = f"{tmp_path / 'afile'} is not a folder" if where == "a file in the way" else "it is a folder"
    commands: list[list[str | Path]] = [
        ["plan", "llama.cpp/Q8_0", model, "-o", out],
        ["schema", "-o", out],
        ["import", "-o", out, "--", "Q4_K_M"],
    ]
    for args in commands:
        code, err = cli(*args)
        assert code == 1, (args, err)
        assert err.strip() == f"error: cannot write {out}: {words}", (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dir", "m.gguf"]
    assert (tmp_path / "afile").read_bytes() == b"mine"


@pytest.mark.parametrize("size", ["inf", "nan", "-inf", "1e300"])
def test_max_shard_size_not_a_number(tmp_path: Path, model: Path, size: str) -> None:
    code, err = cli("apply", "llama.cpp/Q8_0", model, "-o", tmp_path / "o.gguf", "--max-shard-size", size)
    assert code == 2 and "not a size" in err


# ------------------------------------------------------------------------------------ interrupts


def test_ctrl_c_inside_a_chunk_read_is_an_interrupt(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a chunk's rows are being converted: the map cannot be closed while the traceback
    holds a view of it; that must not turn the interrupt into a BufferError (exit 1, checkpoint lost)."""
    real = source_mod.SourceModel._read
    calls = {"n": 0}

    def read(self: source_mod.SourceModel, info: object, start: int, size: int, convert: object) -> object:
        def conv(raw: np.ndarray) -> object:
            calls["n"] += 1
            if calls["n"] == 6:
                view = raw[:8]  # noqa: F841 - held by the traceback, as a real interrupt's frame does
                raise KeyboardInterrupt
            return convert(raw)  # type: ignore[operator]

        return real(self, info, start, size, conv)  # type: ignore[arg-type]

    monkeypatch.setattr(source_mod.SourceModel, "_read", read)
    out = tmp_path / "o.gguf"
    plan = make_plan(model)
    with pytest.raises(ApplyInterrupted, match="resume"):
        apply_plan(plan, model, out, progress=False, threads=1, parallel="threads")
    assert (tmp_path / ".o.gguf.checkpoint.json").is_file()
    monkeypatch.undo()
    res = apply_plan(plan, model, out, progress=False, resume=True)
    assert res.resumed_tensors > 0
