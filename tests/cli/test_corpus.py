"""The hostile-input corpus (issue 12, "Done when"): recipes, GGUF headers, imatrix files, plans, paths,
a full disk, concurrent runs and signals. For every case the ``recipe`` command must:

* exit non-zero (1; 2 for usage errors; 130 for an interrupt),
* print one clear error line that names the culprit (the file, key, rule or tensor), no traceback,
* finish in under 10 s and grow the process's peak memory by under 1 GB,
* leave every file that was there before byte-identical (sha256) and nothing new behind, except the
  resume checkpoint and partial output of an interrupted run,
* leave no process running.

The CLI runs in this process (typer's CliRunner) except for the signal cases, which need a real process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import resource
import signal
import stat
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from gguf_recipe.cli import app
from gguf_recipe.model.header import read_header
from helpers.executor import (
    children_of,
    llama_tensors,
    start_held,
    write_gguf_imatrix,
    write_legacy_imatrix,
    write_model,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs, /dev/zero, /proc")

runner = CliRunner()
ERROR_LINE = re.compile(r"(^|: )error(\[[A-Z][0-9]{3}\])?: ")
GB = 1 << 30

RECIPE = "recipe: 1\nname: corpus\nbase: q8_0\n"
Q = "blk.0.attn_q.weight"


# ------------------------------------------------------------------------------------ the base files


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The valid inputs every case starts from: m.gguf, r.yaml, im.dat, im.gguf, plan.json."""
    d = tmp_path_factory.mktemp("corpus-base")
    m = write_model(d / "m.gguf", llama_tensors(5, n_layer=2), n_layer=2)
    write_legacy_imatrix(d / "im.dat", {Q: (1, np.ones(64, np.float32))})
    write_gguf_imatrix(d / "im.gguf", {Q: (np.ones((1, 64)), np.ones(1))})
    (d / "r.yaml").write_text(RECIPE)
    r = runner.invoke(app, ["plan", "llama.cpp/Q8_0", str(m), "-o", str(d / "plan.json")])
    assert r.exit_code == 0, r.output
    return {p.name: p.read_bytes() for p in d.iterdir()}


# ------------------------------------------------------------------------------------ the cases


Maker = Callable[[Path, dict[str, bytes]], object]


@dataclass
class Case:
    id: str
    args: list[str]  # "{d}" is the case's folder
    culprit: str  # must appear in the error line ("{d}" too)
    files: dict[str, bytes | str | Maker] = field(default_factory=dict)
    code: int | None = None  # exact exit status, when it matters (2: usage error)
    allowed_new: tuple[str, ...] = ()  # files a failing run may leave (an interrupt's checkpoint)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def fifo(d: Path, name: str) -> None:
    os.mkfifo(d / name)


def folder(d: Path, name: str) -> None:
    (d / name).mkdir()


def loop(d: Path, name: str) -> None:
    (d / name).symlink_to(d / (name + ".other"))
    (d / (name + ".other")).symlink_to(d / name)


def devzero(d: Path, name: str) -> None:
    (d / name).symlink_to("/dev/zero")


ODD: dict[str, tuple[Callable[[Path, str], None], str]] = {
    "folder": (folder, "is a folder"),
    "fifo": (fifo, "is a FIFO"),
    "devzero": (devzero, "is a character device"),
    "loop": (loop, "symbolic link loop"),
}


def odd(kind: str, name: str) -> Maker:
    fn = ODD[kind][0]
    return lambda d, _b: fn(d, name)


def recipe_cases() -> list[Case]:
    bad: list[tuple[str, str, str]] = [  # (id, recipe text, culprit)
        ("empty", "", "empty recipe"),
        ("comment-only", "# nothing\n", "empty recipe"),
        ("syntax", "recipe: 1\nbase: [q8_0\n", "invalid YAML"),
        ("tab-indent", "recipe: 1\n\tbase: q8_0\n", "invalid YAML"),
        ("duplicate-key", "recipe: 1\nbase: q8_0\nbase: q4_0\n", "duplicate key 'base'"),
        ("top-level-list", "- recipe: 1\n", "expected a mapping"),
        ("top-level-string", "just text\n", "expected a mapping"),
        ("version-2", "recipe: 2\nbase: q8_0\n", "recipe"),
        ("version-missing", "base: q8_0\n", "recipe"),
        ("unknown-key", "recipe: 1\nbase: q8_0\nbsae: q4_0\n", "bsae"),
        ("unknown-type", "recipe: 1\nbase: q4_km\n", "q4_km"),
        ("ik-only-type", "recipe: 1\nbase: iq4_k\n", "iq4_k"),
        ("base-list", "recipe: 1\nbase: [q8_0]\n", "base"),
        ("rules-mapping", "recipe: 1\nbase: q8_0\nrules: {match: x}\n", "rules"),
        ("rule-no-type", "recipe: 1\nbase: q8_0\nrules:\n  - {match: attn}\n", "type"),
        ("rule-bad-type", "recipe: 1\nbase: q8_0\nrules:\n  - {match: attn, type: q9_9}\n", "q9_9"),
        ("regex-unclosed", "recipe: 1\nbase: q8_0\nrules:\n  - {match: 'a(', type: q8_0}\n", "a("),
        ("regex-bad-escape", "recipe: 1\nbase: q8_0\nrules:\n  - {match: 'a\\', type: q8_0}\n", "regex"),
        ("regex-bad-repeat", "recipe: 1\nbase: q8_0\nrules:\n  - {match: '*a', type: q8_0}\n", "*a"),
        ("regex-nested-plus", "recipe: 1\nbase: q8_0\nrules:\n  - {match: '(a+)+$', type: q8_0}\n", "(a+)+$"),
        ("regex-nested-star", "recipe: 1\nbase: q8_0\nrules:\n  - {match: '(.*)*x', type: q8_0}\n", "(.*)*x"),
        (
            "regex-posix",
            "recipe: 1\nbase: q8_0\nrules:\n  - {match: '[[:alpha:]]', type: q8_0}\n",
            "[[:alpha:]]",
        ),
        ("regex-imatrix-include", "recipe: 1\nbase: q8_0\nimatrix: {include: ['(']}\n", "regex"),
        (
            "layers-bad",
            "recipe: 1\nbase: q8_0\nrules:\n  - {match: attn, layers: ['x..y'], type: q8_0}\n",
            "x..y",
        ),
        (
            "layers-step0",
            "recipe: 1\nbase: q8_0\nrules:\n  - {match: attn, layers: ['1.. step 0'], type: q8_0}\n",
            "step",
        ),
        (
            "when-bad",
            "recipe: 1\nbase: q8_0\nrules:\n  - {match: attn, when: {layers: '>>4'}, type: q8_0}\n",
            ">>4",
        ),
        (
            "when-unknown",
            "recipe: 1\nbase: q8_0\nrules:\n  - {match: attn, when: {colour: red}, type: q8_0}\n",
            "colour",
        ),
        (
            "metadata-nan",
            "recipe: 1\nbase: q8_0\nmetadata:\n  general.x: {type: float, value: .nan}\n",
            "general.x",
        ),
        (
            "metadata-inf",
            "recipe: 1\nbase: q8_0\nmetadata:\n  general.x: {type: float, value: -.inf}\n",
            "general.x",
        ),
        (
            "metadata-bigint",
            "recipe: 1\nbase: q8_0\nmetadata:\n  general.x: {type: int, value: 1e400}\n",
            "general.x",
        ),
        (
            "metadata-hugeint",
            "recipe: 1\nbase: q8_0\nmetadata:\n  general.x: {type: int, value: 99999999999999999999999}\n",
            "general.x",
        ),
        (
            "metadata-type",
            "recipe: 1\nbase: q8_0\nmetadata:\n  general.x: {type: int, value: abc}\n",
            "general.x",
        ),
        (
            "metadata-reserved",
            "recipe: 1\nbase: q8_0\nmetadata:\n  split.count: {type: int, value: 3}\n",
            "split.count",
        ),
        (
            "tag-python",
            'recipe: 1\nbase: q8_0\nname: !!python/object/apply:os.system ["true"]\n',
            "!!python/object/apply:os.system",
        ),
        ("tag-custom", "recipe: 1\nbase: !mytag q8_0\n", "!mytag"),
        ("tag-binary", "recipe: 1\nbase: q8_0\nname: !!binary aGVsbG8=\n", "!!binary"),
        ("tag-set", "recipe: 1\nbase: q8_0\nrules: !!set {a: null}\n", "!!set"),
        (
            "alias-bomb",
            "recipe: 1\nbase: q8_0\nx0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)),
            "expands to more than",
        ),
        ("deep-nesting", "recipe: 1\nbase: q8_0\nx: " + "[" * 200 + "]" * 200 + "\n", "nested too deeply"),
        ("json-invalid", '{"recipe": 1, "base": "q8_0",}\n', "invalid JSON"),
        ("non-utf8", b"recipe: 1\nbase: q8_0\nname: \xff\xfe\n", "not UTF-8"),  # type: ignore[list-item]
        ("binary-garbage", bytes(range(256)) * 4, "not UTF-8"),  # type: ignore[list-item]
        ("nul-bytes", "recipe: 1\nbase: q8_0\x00\n", "YAML"),
        ("too-big", "recipe: 1\nbase: q8_0\n" + "#" * (1 << 20), "bytes allowed"),
        ("extends-missing", "recipe: 1\nextends: gone.yaml\n", "extends 'gone.yaml'"),
        ("extends-passwd", "recipe: 1\nextends: /etc/passwd\n", "extends '/etc/passwd'"),
        ("extends-self", "recipe: 1\nextends: r.yaml\n", "loops back"),
        ("extends-builtin-typo", "recipe: 1\nextends: llama.cpp/Q4_K_X\n", "llama.cpp/Q4_K_X"),
        ("prune-outside", "recipe: 1\nbase: q8_0\nprune_layers: [99]\n", "99"),
    ]
    cases: list[Case] = []
    for id_, text, culprit in bad:
        for cmd in ("validate", "plan"):
            if cmd == "validate" and id_ in ("prune-outside",):
                continue  # needs the model
            args = [cmd, "{d}/r.yaml", *(["{d}/m.gguf"] if cmd == "plan" else [])]
            cases.append(Case(f"recipe-{id_}-{cmd}", args, culprit, {"r.yaml": text}))
    cases.append(
        Case(
            "recipe-extends-loop-2",
            ["validate", "{d}/r.yaml"],
            "loops back",
            {"r.yaml": "recipe: 1\nextends: b.yaml\n", "b.yaml": "recipe: 1\nextends: r.yaml\n"},
        )
    )
    cases.append(
        Case(
            "recipe-extends-fifo",
            ["plan", "{d}/r.yaml", "{d}/m.gguf"],
            "is a FIFO",
            {"r.yaml": "recipe: 1\nextends: p.yaml\n", "p.yaml": odd("fifo", "p.yaml")},
        )
    )
    cases.append(
        Case(
            "recipe-extends-folder",
            ["validate", "{d}/r.yaml"],
            "is a folder",
            {"r.yaml": "recipe: 1\nextends: p.yaml\n", "p.yaml": odd("folder", "p.yaml")},
        )
    )
    for kind, (_, words) in ODD.items():
        for cmd in ("validate", "plan", "export"):
            args = [cmd, "{d}/x.yaml", *(["{d}/m.gguf"] if cmd == "plan" else [])]
            cases.append(Case(f"recipe-is-{kind}-{cmd}", args, words, {"x.yaml": odd(kind, "x.yaml")}))
    return cases


def _header_layout(model: bytes) -> dict[str, int]:
    """Offsets inside the base model's header: the first key/value and the first tensor info."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(model)
        f.flush()
        h, _ = read_header(f.name)
    kv0 = 24
    t0 = 24 + sum(len(kv.raw) for kv in h.kvs)
    name = h.tensors[0].name.encode()
    ndims = t0 + 8 + len(name)
    return {
        "kv0": kv0,
        "t0": t0,
        "ndims": ndims,
        "dim0": ndims + 4,
        "type": ndims + 4 + 8 * len(h.tensors[0].shape),
        "offset": ndims + 4 + 8 * len(h.tensors[0].shape) + 4,
        "header_end": h.header_bytes,
        "data": h.data_offset,
        "second_tensor_dims": 0,
    }


def patched(at: str, fmt: str, value: int, delta: int = 0) -> Maker:
    def make(d: Path, b: dict[str, bytes]) -> None:
        data = bytearray(b["m.gguf"])
        pos = _header_layout(b["m.gguf"])[at] + delta
        struct.pack_into(fmt, data, pos, value)
        (d / "h.gguf").write_bytes(bytes(data))

    return make


def truncated(n: int | str) -> Maker:
    def make(d: Path, b: dict[str, bytes]) -> None:
        lay = _header_layout(b["m.gguf"])
        k = n if isinstance(n, int) else lay[n.split("+")[0]] + int(n.split("+")[1] if "+" in n else 0)
        (d / "h.gguf").write_bytes(b["m.gguf"][:k])

    return make


def header_bytes(content: bytes) -> Maker:
    return lambda d, _b: (d / "h.gguf").write_bytes(content)


def header_cases() -> list[Case]:
    both: list[tuple[str, Maker, str]] = [  # refused by plan and apply
        ("empty", header_bytes(b""), "h.gguf"),
        ("magic-only", header_bytes(b"GGUF"), "h.gguf"),
        ("ggml-magic", header_bytes(b"ggjt" + b"\0" * 60), "pre-GGUF"),
        ("zip", header_bytes(b"PK\x03\x04" + b"\0" * 60), "h.gguf"),
        ("text", header_bytes(b"hello, this is not a model at all\n" * 4), "not a GGUF file"),
        ("zeros", header_bytes(b"\0" * 4096), "not a GGUF file"),
        ("version-1", patched("kv0", "<I", 1, -20), "version 1"),
        ("version-4", patched("kv0", "<I", 4, -20), "version 4"),
        ("big-endian", patched("kv0", "<I", 3 << 24, -20), "big-endian"),
        ("tensor-count-huge", patched("kv0", "<Q", 1 << 60, -16), "h.gguf"),
        ("kv-count-huge", patched("kv0", "<Q", 1 << 60, -8), "h.gguf"),
        ("key-length-huge", patched("kv0", "<Q", 1 << 40), "h.gguf"),
        (
            "kv-type-unknown",
            patched("kv0", "<I", 99, 8 + len("general.architecture")),
            "unknown value type 99",
        ),
        ("ndims-9", patched("ndims", "<I", 9), "9 dimensions"),
        ("ndims-huge", patched("ndims", "<I", 1 << 31), "dimensions"),
        ("dim-2-63", patched("dim0", "<Q", 1 << 63), "63 bits"),
        ("dim-product", patched("dim0", "<Q", 1 << 62), "63 bits"),
        ("ggml-type-unknown", patched("type", "<I", 99), "unknown ggml type 99"),
        ("ggml-type-removed", patched("type", "<I", 4), "h.gguf"),
        ("partial-block", patched("type", "<I", 12), "block size"),
        ("truncated-3", truncated(3), "h.gguf"),
        ("truncated-8", truncated(8), "h.gguf"),
        ("truncated-16", truncated(16), "h.gguf"),
        ("truncated-23", truncated(23), "h.gguf"),
        ("truncated-kv", truncated("kv0+30"), "truncated"),
        ("truncated-tensor-info", truncated("t0+10"), "truncated"),
        ("truncated-before-data", truncated("header_end+-1"), "truncated"),
    ]
    apply_only: list[tuple[str, Maker, str]] = [  # the header reads; the data layout does not
        ("offset-misaligned", patched("offset", "<Q", 1), "not aligned"),
        ("offset-wrong", patched("offset", "<Q", 4096), "offset"),
        ("data-truncated", truncated("data+100"), "truncated"),
    ]
    cases: list[Case] = []
    for id_, make, culprit in both:
        cases.append(
            Case(f"header-{id_}-plan", ["plan", "llama.cpp/Q8_0", "{d}/h.gguf"], culprit, {"h.gguf": make})
        )
        cases.append(
            Case(
                f"header-{id_}-apply",
                ["apply", "llama.cpp/Q8_0", "{d}/h.gguf", "-o", "{d}/o.gguf"],
                culprit,
                {"h.gguf": make},
            )
        )
    for id_, make, culprit in apply_only:
        cases.append(
            Case(
                f"header-{id_}-apply",
                ["apply", "llama.cpp/Q8_0", "{d}/h.gguf", "-o", "{d}/o.gguf"],
                culprit,
                {"h.gguf": make},
            )
        )

    def block_count(d: Path, b: dict[str, bytes]) -> None:
        write_model(d / "h.gguf", llama_tensors(1))
        data = (
            (d / "h.gguf")
            .read_bytes()
            .replace(b"llama.block_count\x04\x00\x00\x00", b"llama.block_count\x06\x00\x00\x00", 1)
        )
        (d / "h.gguf").write_bytes(data)

    cases.append(
        Case(
            "header-block-count-float",
            ["plan", "llama.cpp/Q4_K_M", "{d}/h.gguf"],
            "llama.block_count",
            {"h.gguf": block_count},
        )
    )
    return cases


def imatrix_cases() -> list[Case]:
    def legacy(entries: dict[str, tuple[int, Any]], **kw: Any) -> Maker:
        return lambda d, _b: (write_legacy_imatrix(d / "i.dat", entries, **kw), None)[1]

    def raw(content: bytes) -> Maker:
        return lambda d, _b: (d / "i.dat").write_bytes(content)

    ones = np.ones(64, np.float32)
    neg = ones.copy()
    neg[3] = -1
    nan = ones.copy()
    nan[5] = np.nan
    inf = ones.copy()
    inf[2] = np.inf
    bad: list[tuple[str, Maker, str]] = [
        ("empty", raw(b""), "i.dat"),
        ("short", raw(b"\x01\x00"), "i.dat"),
        ("zero-entries", raw(struct.pack("<i", 0)), "no data"),
        ("negative-entries", raw(struct.pack("<i", -5)), "i.dat"),
        ("huge-entries", raw(struct.pack("<i", 1 << 30) + b"\0" * 64), "impossible"),
        ("name-length-huge", raw(struct.pack("<ii", 1, 1 << 30) + b"x" * 32), "i.dat"),
        (
            "values-truncated",
            raw(struct.pack("<ii", 1, 1) + b"x" + struct.pack("<ii", 1, 1000) + b"\0" * 16),
            "truncated",
        ),
        ("value-count-0", raw(struct.pack("<ii", 1, 1) + b"x" + struct.pack("<ii", 1, 0)), "0 values"),
        ("negative-value", legacy({Q: (1, neg)}), "negative value"),
        ("nan-value", legacy({Q: (1, nan)}), "non-finite"),
        ("inf-value", legacy({Q: (1, inf)}), "non-finite"),
        ("wrong-size", legacy({Q: (1, np.ones(32, np.float32))}), Q),
        ("gguf-truncated", lambda d, b: (d / "i.dat").write_bytes(b["im.gguf"][:40]), "i.dat"),
        (
            "gguf-no-metadata",
            lambda d, _b: (
                write_gguf_imatrix(d / "i.dat", {Q: (np.ones((1, 64)), np.ones(1))}, metadata=False),
                None,
            )[1],
            "missing imatrix metadata",
        ),
        (
            "gguf-negative",
            lambda d, _b: (write_gguf_imatrix(d / "i.dat", {Q: (-np.ones((1, 64)), np.ones(1))}), None)[1],
            "negative value",
        ),
        (
            "gguf-mismatch",
            lambda d, _b: (write_gguf_imatrix(d / "i.dat", {Q: (np.ones((1, 64)), np.ones(3))}), None)[1],
            Q,
        ),
        ("is-model", lambda d, b: (d / "i.dat").write_bytes(b["m.gguf"]), "i.dat"),
    ]
    for kind, (_, words) in ODD.items():
        bad.append((f"is-{kind}", odd(kind, "i.dat"), words))
    cases: list[Case] = []
    for id_, make, culprit in bad:
        cases.append(
            Case(
                f"imatrix-{id_}-apply",
                ["apply", "llama.cpp/Q8_0", "{d}/m.gguf", "-o", "{d}/o.gguf", "--imatrix", "{d}/i.dat"],
                culprit,
                {"i.dat": make},
            )
        )
    for id_, make, culprit in bad[:6] + bad[8:11]:
        cases.append(
            Case(
                f"imatrix-{id_}-plan",
                ["plan", "llama.cpp/Q8_0", "{d}/m.gguf", "--imatrix", "{d}/i.dat"],
                culprit,
                {"i.dat": make},
            )
        )
    return cases


def plan_edit(fn: Callable[[dict[str, Any]], Any]) -> Maker:
    def make(d: Path, b: dict[str, bytes]) -> None:
        data = json.loads(b["plan.json"])
        fn(data)
        (d / "plan.json").write_text(json.dumps(data))

    return make


def _tensor(data: dict[str, Any], name: str = Q) -> dict[str, Any]:
    t: dict[str, Any] = next(t for t in data["tensors"] if t["source_name"] == name)
    return t


def plan_cases() -> list[Case]:
    def other_model(d: Path, _b: dict[str, bytes]) -> None:
        write_model(d / "m.gguf", llama_tensors(5, n_layer=3), n_layer=3)

    def changed_header(d: Path, _b: dict[str, bytes]) -> None:
        write_model(d / "m.gguf", llama_tensors(5, n_layer=2), n_layer=2, extra_kv={"general.note": "x"})

    bad: list[tuple[str, dict[str, bytes | str | Maker], str]] = [
        ("not-valid", {"plan.json": '{"fingerprints": {}, "tensors": [], "recipe_name": 3}'}, "plan.json"),
        (
            "schema-version",
            {"plan.json": plan_edit(lambda p: p.update(plan_schema_version=9))},
            "schema version 9",
        ),
        ("unknown-type", {"plan.json": plan_edit(lambda p: _tensor(p).update(type="q9_9"))}, "q9_9"),
        ("wrong-bytes", {"plan.json": plan_edit(lambda p: _tensor(p).update(target_bytes=1))}, Q),
        ("wrong-shape", {"plan.json": plan_edit(lambda p: _tensor(p).update(shape=[32, 2]))}, Q),
        ("wrong-source-type", {"plan.json": plan_edit(lambda p: _tensor(p).update(source_type="f32"))}, Q),
        (
            "unknown-tensor",
            {"plan.json": plan_edit(lambda p: _tensor(p).update(source_name="nope.weight"))},
            "nope.weight",
        ),
        ("duplicate-tensor", {"plan.json": plan_edit(lambda p: p["tensors"].append(dict(_tensor(p))))}, Q),
        ("missing-tensor", {"plan.json": plan_edit(lambda p: p["tensors"].remove(_tensor(p)))}, Q),
        (
            "edited-decision",
            {
                "plan.json": plan_edit(
                    lambda p: _tensor(p).update(
                        type="f16", action="copy", target_bytes=_tensor(p)["source_bytes"]
                    )
                )
            },
            Q,
        ),
        (
            "nan-override",
            {"plan.json": plan_edit(lambda p: p["metadata_overrides"].update({"general.x": float("nan")}))},
            "general.x",
        ),
        (
            "reserved-override",
            {"plan.json": plan_edit(lambda p: p["metadata_overrides"].update({"general.alignment": 64}))},
            "general.alignment",
        ),
        (
            "int-override",
            {"plan.json": plan_edit(lambda p: p["metadata_overrides"].update({"general.x": 1 << 70}))},
            "general.x",
        ),
        ("stale-model", {"m.gguf": changed_header}, "stale plan"),
        ("other-model", {"m.gguf": other_model}, "stale plan"),
        (
            "recipe-changed",
            {"plan.json": plan_edit(lambda p: p["fingerprints"].update(recipe="0" * 64))},
            "recipe changed",
        ),
    ]
    cases = [
        Case(f"plan-{id_}", ["apply", "{d}/plan.json", "{d}/m.gguf", "-o", "{d}/o.gguf"], culprit, files)
        for id_, files, culprit in bad
    ]
    for kind, (_, words) in ODD.items():
        cases.append(
            Case(
                f"plan-is-{kind}",
                ["apply", "{d}/p.json", "{d}/m.gguf", "-o", "{d}/o.gguf"],
                words,
                {"p.json": odd(kind, "p.json")},
            )
        )
    return cases


def path_cases() -> list[Case]:
    out = [
        ("plan-onto-model", ["plan", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/m.gguf"], "the input model"),
        ("plan-onto-recipe", ["plan", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/r.yaml"], "the recipe"),
        (
            "plan-onto-imatrix",
            ["plan", "{d}/r.yaml", "{d}/m.gguf", "--imatrix", "{d}/im.dat", "-o", "{d}/im.dat"],
            "the imatrix",
        ),
        ("apply-onto-model", ["apply", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/m.gguf"], "the input model"),
        ("apply-onto-recipe", ["apply", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/r.yaml"], "the recipe"),
        ("apply-onto-plan", ["apply", "{d}/plan.json", "{d}/m.gguf", "-o", "{d}/plan.json"], "the plan"),
        (
            "apply-onto-imatrix",
            ["apply", "{d}/r.yaml", "{d}/m.gguf", "--imatrix", "{d}/im.dat", "-o", "{d}/im.dat"],
            "the imatrix",
        ),
        (
            "apply-onto-model-link",
            ["apply", "{d}/r.yaml", "{d}/link.gguf", "-o", "{d}/m.gguf"],
            "the input model",
        ),
        (
            "plan-below-a-file",
            ["plan", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/r.yaml/no/p.json"],
            "{d}/r.yaml",
        ),
        ("schema-below-a-file", ["schema", "-o", "{d}/r.yaml/s.json"], "{d}/r.yaml"),
        ("import-below-a-file", ["import", "-o", "{d}/r.yaml/r.yaml", "--", "Q4_K_M"], "{d}/r.yaml"),
        (
            "apply-below-a-file",
            ["apply", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/r.yaml/no/o.gguf"],
            "{d}/r.yaml",
        ),
        ("plan-onto-folder", ["plan", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/sub"], "{d}/sub"),
        ("schema-onto-folder", ["schema", "-o", "{d}/sub"], "{d}/sub"),
        ("import-onto-folder", ["import", "-o", "{d}/sub", "--", "Q4_K_M"], "{d}/sub"),
        ("apply-onto-folder", ["apply", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/sub"], "{d}/sub"),
        ("model-missing", ["apply", "{d}/r.yaml", "{d}/gone.gguf", "-o", "{d}/o.gguf"], "{d}/gone.gguf"),
        (
            "recipe-named-like-lock",
            ["apply", "{d}/.o.gguf.lock", "{d}/m.gguf", "-o", "{d}/o.gguf"],
            "the recipe",
        ),
        (
            "recipe-named-like-checkpoint",
            ["apply", "{d}/.o.gguf.checkpoint.json", "{d}/m.gguf", "-o", "{d}/o.gguf"],
            "the recipe",
        ),
        (
            "recipe-named-like-partial",
            ["apply", "{d}/.o.gguf.partial", "{d}/m.gguf", "-o", "{d}/o.gguf"],
            "the recipe",
        ),
    ]
    files: dict[str, bytes | str | Maker] = {
        "sub": odd("folder", "sub"),
        "link.gguf": lambda d, _b: (d / "link.gguf").symlink_to(d / "m.gguf"),
        ".o.gguf.lock": RECIPE,
        ".o.gguf.checkpoint.json": json.dumps({"recipe": 1, "name": "corpus", "base": "q8_0"}),
        ".o.gguf.partial": RECIPE,
    }
    cases = [Case(f"path-{id_}", args, culprit, dict(files)) for id_, args, culprit in out]
    for kind, (_, words) in ODD.items():
        cases.append(
            Case(
                f"path-model-is-{kind}",
                ["apply", "{d}/r.yaml", "{d}/x.gguf", "-o", "{d}/o.gguf"],
                words,
                {"x.gguf": odd(kind, "x.gguf")},
            )
        )
        cases.append(
            Case(
                f"path-plan-model-is-{kind}",
                ["plan", "{d}/r.yaml", "{d}/x.gguf"],
                words,
                {"x.gguf": odd(kind, "x.gguf")},
            )
        )
    for id_, opts, culprit in (
        ("posix", ["--tensor-type", "[[:alpha:]]=q8_0", "Q4_K_M"], "[[:alpha:]]"),
        ("bad-regex", ["--tensor-type", "(a+=q8_0", "Q4_K_M"], "(a+"),
        ("nested-regex", ["--tensor-type", "(a+)+=q8_0", "Q4_K_M"], "(a+)+"),
        ("unknown-type", ["Q9_X"], "Q9_X"),
        ("unknown-tensor-type", ["--tensor-type", "attn_v=q9_9", "Q4_K_M"], "q9_9"),
    ):
        cases.append(Case(f"import-{id_}", ["import", "-o", "{d}/new.yaml", "--", *opts], culprit))
    for size in ("inf", "nan", "-1G", "1e300", "2X"):
        cases.append(
            Case(
                f"usage-shard-size-{size}",
                ["apply", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/o.gguf", "--max-shard-size", size],
                "--max-shard-size",
                code=2,
            )
        )
    return cases


def sparse(name: str) -> Maker:
    """A 4 GiB file of zeros that takes no disk (a wrong file given as an input must not be read whole)."""

    def make(d: Path, _b: dict[str, bytes]) -> None:
        with open(d / name, "wb") as f:
            f.truncate(4 * GB)

    return make


def big_file_cases() -> list[Case]:
    return [
        Case(
            "big-as-recipe-validate",
            ["validate", "{d}/big.yaml"],
            "bytes allowed",
            {"big.yaml": sparse("big.yaml")},
        ),
        Case(
            "big-as-recipe-apply",
            ["apply", "{d}/big.yaml", "{d}/m.gguf", "-o", "{d}/o.gguf"],
            "big.yaml",
            {"big.yaml": sparse("big.yaml")},
        ),
        Case(
            "big-as-plan-apply",
            ["apply", "{d}/big.json", "{d}/m.gguf", "-o", "{d}/o.gguf"],
            "big.json",
            {"big.json": sparse("big.json")},
        ),
        Case(
            "big-as-model-plan",
            ["plan", "{d}/r.yaml", "{d}/big.gguf"],
            "big.gguf",
            {"big.gguf": sparse("big.gguf")},
        ),
        Case(
            "big-as-model-apply",
            ["apply", "{d}/r.yaml", "{d}/big.gguf", "-o", "{d}/o.gguf"],
            "big.gguf",
            {"big.gguf": sparse("big.gguf")},
        ),
        Case(
            "big-as-imatrix-apply",
            ["apply", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/o.gguf", "--imatrix", "{d}/big.dat"],
            "big.dat",
            {"big.dat": sparse("big.dat")},
        ),
        Case(
            "big-as-imatrix-plan",
            ["plan", "{d}/r.yaml", "{d}/m.gguf", "--imatrix", "{d}/big.dat"],
            "big.dat",
            {"big.dat": sparse("big.dat")},
        ),
    ]


def disk_cases() -> list[Case]:
    import errno

    from gguf_recipe.executor import writer

    def failing(code: int) -> Callable[[pytest.MonkeyPatch], None]:
        def patch(mp: pytest.MonkeyPatch) -> None:
            real = writer._write_bytes

            def write(fd: int, mv: memoryview) -> None:
                if mv.nbytes > 1024:
                    raise OSError(code, os.strerror(code))
                real(fd, mv)

            mp.setattr(writer, "_write_bytes", write)

        return patch

    args = ["apply", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/o.gguf", "--threads", "1"]
    return [
        Case("disk-full", args, "disk full", patch=failing(errno.ENOSPC)),
        Case("disk-quota", args, "disk full", patch=failing(errno.EDQUOT)),
        Case("disk-read-only", args, "{d}/o.gguf", patch=failing(errno.EROFS)),
        Case("disk-io-error", args, "{d}/o.gguf", patch=failing(errno.EIO)),
    ]


def concurrency_cases() -> list[Case]:
    def lock(d: Path, _b: dict[str, bytes]) -> None:
        (d / ".o.gguf.lock").write_bytes(b"")
        f = open(d / ".o.gguf.lock", "a+b")  # noqa: SIM115 - held for the case (closed by the GC)
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        _HELD.append(f)

    base = ["apply", "{d}/r.yaml", "{d}/m.gguf", "-o", "{d}/o.gguf"]
    return [
        Case("concurrent-locked", base, "another run", {".o.gguf.lock": lock}),
        Case("concurrent-locked-resume", [*base, "--resume"], "another run", {".o.gguf.lock": lock}),
        Case(
            "concurrent-locked-plan",
            ["apply", "{d}/plan.json", "{d}/m.gguf", "-o", "{d}/o.gguf"],
            "another run",
            {".o.gguf.lock": lock},
        ),
    ]


_HELD: list[Any] = []

CASES = (
    recipe_cases()
    + header_cases()
    + imatrix_cases()
    + plan_cases()
    + path_cases()
    + big_file_cases()
    + disk_cases()
    + concurrency_cases()
)


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 150, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------------------------------ the checks


def snapshot(d: Path) -> dict[str, str]:
    """Every entry under ``d``: regular files by sha256, the rest by kind (FIFOs are never opened)."""
    out: dict[str, str] = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(d))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = f"link:{os.readlink(p)}"
        elif stat.S_ISREG(st.st_mode) and st.st_size > 64 << 20:  # the sparse 4 GiB files: not hashed
            out[rel] = f"size:{st.st_size} mtime:{st.st_mtime_ns}"
        elif stat.S_ISREG(st.st_mode):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = f"mode:{stat.S_IFMT(st.st_mode)}"
    return out


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def check_outcome(case: Case, d: Path, code: int, stderr: str, stdout: str, seconds: float) -> None:
    culprit = case.culprit.format(d=d)
    assert "Traceback" not in stderr + stdout, stderr
    if case.code is not None:
        assert code == case.code, (code, stderr)
    assert code != 0, (stdout, stderr)
    if case.code == 2:  # a usage error: typer's box names the option
        assert culprit in stderr, stderr
    else:
        errors = [line for line in stderr.splitlines() if ERROR_LINE.search(line)]
        assert len(errors) == 1, stderr
        assert culprit in errors[0], (culprit, stderr)
    assert seconds < 10, seconds


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_case(
    case: Case, base: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path
    for name, data in base.items():
        (d / name).write_bytes(data)
    for name, content in case.files.items():
        if isinstance(content, bytes):
            (d / name).write_bytes(content)
        elif isinstance(content, str):
            (d / name).write_text(content)
        else:
            if os.path.lexists(d / name):
                (d / name).unlink()
            content(d, base)
    before = snapshot(d)
    if case.patch is not None:
        case.patch(monkeypatch)
    args = [a.format(d=d) for a in case.args]
    rss0 = peak_rss()
    t0 = time.monotonic()
    r = runner.invoke(app, args)
    seconds = time.monotonic() - t0
    monkeypatch.undo()
    for f in _HELD:
        f.close()
    _HELD.clear()
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    check_outcome(case, d, r.exit_code, r.stderr, r.stdout, seconds)
    assert peak_rss() - rss0 < GB
    after = snapshot(d)
    assert after == before
    assert children_of(os.getpid()) == []


# ------------------------------------------------------------------------------------ signals


def _cmd(d: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gguf_recipe.cli",
        "apply",
        "llama.cpp/Q8_0",
        str(d / "m.gguf"),
        "-o",
        str(d / "o.gguf"),
        *extra,
    ]


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_signal_case(sig: signal.Signals, base: dict[str, bytes], tmp_path: Path) -> None:
    """A run held mid-way and signalled: a clear message or a plain death by the signal, the inputs
    unchanged, no output, nothing left but the resume checkpoint and partial output, no process."""
    d = tmp_path
    (d / "m.gguf").write_bytes(base["m.gguf"])
    before = snapshot(d)
    t0 = time.monotonic()
    proc, _ = start_held(_cmd(d, "--threads", "1"), d)
    kids = children_of(proc.pid)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    assert "Traceback" not in stderr
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        errors = [line for line in stderr.splitlines() if "interrupted" in line]
        assert len(errors) == 1 and str(d / "o.gguf") in errors[0], stderr
    else:
        assert proc.returncode == -sig
    after = snapshot(d)
    for name in (
        ".o.gguf.checkpoint.json",
        ".o.gguf.partial",
        ".o.gguf.lock",
        "release-tensor-written.reached",
    ):
        after.pop(name, None)
    assert after == before
    assert [p for p in kids if Path(f"/proc/{p}").exists()] == []


def test_sigkill_case(base: dict[str, bytes], tmp_path: Path) -> None:
    d = tmp_path
    (d / "m.gguf").write_bytes(base["m.gguf"])
    proc, _ = start_held(_cmd(d, "--threads", "1"), d)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (d / "o.gguf").exists()
    assert (d / "m.gguf").read_bytes() == base["m.gguf"]
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
