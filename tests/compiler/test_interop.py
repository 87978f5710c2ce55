"""llama-quantize command lines <-> recipes (parsing as tools/quantize/quantize.cpp does; round trips)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gguf_recipe.interop import (
    InteropError,
    export_llama_quantize,
    export_llama_quantize_notes,
    import_llama_quantize,
    parse_llama_quantize_args,
)
from gguf_recipe.recipe.loader import load


def test_tensor_type_patterns_are_lowercased_and_types_case_insensitive() -> None:
    a = parse_llama_quantize_args(
        ["--tensor-type", r"BLK\.[0-3]\.FFN_Down=Q8_0", "--tensor-type", "attn_v=Q6_k", "Q4_K_M"]
    )
    assert [(t.pattern, t.type) for t in a.tensor_types] == [
        (r"blk\.[0-3]\.ffn_down", "q8_0"),
        ("attn_v", "q6_K"),
    ]
    assert a.ftype == "Q4_K_M"


@pytest.mark.parametrize(
    ("arg", "ftype"),
    [
        ("Q4_K", "Q4_K_M"),
        ("q4_k_m", "Q4_K_M"),
        ("15", "Q4_K_M"),
        ("Q3_K", "Q3_K_M"),
        ("q5_k", "Q5_K_M"),
        ("7", "Q8_0"),
        ("1", "F16"),
        ("iq2_m", "IQ2_M"),
        ("mxfp4_moe", "MXFP4_MOE"),
    ],
)
def test_ftype_names_and_numbers(arg: str, ftype: str) -> None:
    assert parse_llama_quantize_args([arg]).ftype == ftype


def test_full_command_line_forms() -> None:
    a = parse_llama_quantize_args(["llama-quantize", "--pure", "in.gguf", "Q6_K", "8"])
    assert a.pure and a.ftype == "Q6_K"
    b = parse_llama_quantize_args(["--leave-output-tensor", "in.gguf", "out.gguf", "q8_0"])
    assert b.leave_output_tensor and b.ftype == "Q8_0"


def test_tensor_type_file(tmp_path: Path) -> None:
    (tmp_path / "tt.txt").write_text("attn_v=Q6_K   ffn_down=q5_k\n\nblk\\.0\\..*=q8_0\n")
    a = parse_llama_quantize_args(["--tensor-type-file", "tt.txt", "Q4_K_M"], base_dir=tmp_path)
    assert [(t.pattern, t.type) for t in a.tensor_types] == [
        ("attn_v", "q6_K"),
        ("ffn_down", "q5_K"),
        ("blk\\.0\\..*", "q8_0"),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tensor-type", "attn_v", "Q4_K_M"], "malformed tensor type 'attn_v' (expected pattern=type)"),
        (["--tensor-type", "=q8_0", "Q4_K_M"], "missing tensor name in '=q8_0'"),
        (["--tensor-type", "attn_v=", "Q4_K_M"], "missing quantization type in 'attn_v='"),
        (["--tensor-type", "attn_v=q9_0", "Q4_K_M"], "invalid quantization type 'q9_0' in 'attn_v=q9_0'"),
        (["--output-tensor-type", "q9", "Q4_K_M"], "invalid ggml_type 'q9'"),
        (["--prune-layers", "1,x", "Q4_K_M"], "invalid layer id 'x' in --prune-layers"),
        (
            ["--override-kv", "a=foo:1", "Q4_K_M"],
            "invalid type for KV override 'a=foo:1' (expected int:, float:, bool: or str:)",
        ),
        (
            ["--override-kv", "a=bool:yes", "Q4_K_M"],
            "invalid boolean value for KV override 'a=bool:yes' (expected true or false)",
        ),
        (
            ["--include-weights", "a", "--exclude-weights", "b", "Q4_K_M"],
            "--include-weights and --exclude-weights cannot be used together",
        ),
        (["--frobnicate", "Q4_K_M"], "unknown llama-quantize option '--frobnicate'"),
        (["--tensor-type"], "--tensor-type needs a value"),
        (["--pure"], "missing ftype (the quantization type, e.g. Q4_K_M) after the options"),
        (["Q4_K_MM"], "invalid ftype 'Q4_K_MM'; did you mean one of 'Q4_K_M', 'Q5_K_M', 'Q4_K_S'?"),
        (["COPY"], "ftype COPY (copy every tensor unchanged) has no recipe equivalent"),
        (
            ["--tensor-type-file", "/nonexistent/tt.txt", "Q4_K_M"],
            "failed to open file '/nonexistent/tt.txt': No such file or directory",
        ),
        (
            ["--custom-q", "blk\\.[0-2]\\..*=iq5_k_r4", "Q4_K_M"],
            "'iq5_k_r4' is an ik_llama.cpp type; llama.cpp (and gguf-recipe) cannot write it; use a mainline type such as "
            "'q5_K' (or pass --ik-to-mainline to replace ik_llama.cpp types automatically)",
        ),
    ],
)
def test_parse_errors(argv: list[str], message: str) -> None:
    with pytest.raises(InteropError) as exc:
        import_llama_quantize(argv)
    assert str(exc.value) == message


def test_import_text_is_a_valid_readable_recipe() -> None:
    text = import_llama_quantize(
        [
            "--tensor-type",
            "ffn_down=q5_K",
            "--tensor-type",
            r"blk\.[0-3]\.FFN_down=q8_0",
            "--output-tensor-type",
            "q8_0",
            "--token-embedding-type",
            "Q8_0",
            "--prune-layers",
            "2,1",
            "--override-kv",
            "general.name=str:it's",
            "--imatrix",
            "x.dat",
            "--include-weights",
            "ffn_down",
            "Q4_K_M",
        ]
    )
    assert text.splitlines()[2:] == [
        "recipe: 1",
        "name: 'imported-Q4_K_M'",
        "extends: llama.cpp/Q4_K_M",
        "counters: llama-quantize    # --tensor-type moves the mix's position-based choices, as here",
        "token_embedding: q8_0",
        "output: q8_0",
        "imatrix:",
        "  required: true               # --imatrix x.dat",
        "  include: ['ffn_down']",
        "prune_layers: [1, 2]",
        "metadata:",
        "  'general.name': {type: str, value: 'it''s'}",
        "rules:",
        "  - match: 'ffn_down'",
        "    type: q5_K",
        "  - match: 'blk\\.[0-3]\\.ffn_down'",
        "    type: q8_0",
    ]
    r = load(text).recipe
    assert r.metadata["general.name"].value == "it's"
    assert r.output == "q8_0" and r.prune_layers == [1, 2]


def test_pure_and_leave_output() -> None:
    text = import_llama_quantize(["--pure", "--leave-output-tensor", "IQ2_S"])
    r = load(text).recipe
    assert (r.base, r.ftype, r.output, r.extends) == ("iq2_xs", "IQ2_S", "keep", None)


def test_tensor_types_ignored_for_unquantized_ftypes() -> None:
    text = import_llama_quantize(["--tensor-type", "attn_v=q8_0", "F16"])
    assert "# llama-quantize ignores --tensor-type for F16 (its base type is not quantized): dropped." in text
    assert load(text).recipe.rules == []


def test_custom_q_keeps_case_and_maps_ik_types() -> None:
    text = import_llama_quantize(
        ["--custom-q", r"token_embd\.weight=iq6_k,blk\.[0-2]\..*=iq5_k_r4,Blk\.60=q8_0", "Q4_K_M"],
        ik_to_mainline=True,
    )
    r = load(text).recipe
    assert [(x.match, x.type) for x in r.rules] == [
        (r"token_embd\.weight", "q6_K"),
        (r"blk\.[0-2]\..*", "q5_K"),
        (r"Blk\.60", "q8_0"),
    ]
    assert "# ik_llama.cpp type iq5_k_r4 replaced by the mainline type q5_K." in text


@pytest.mark.parametrize(
    "argv",
    [
        ["--pure", "Q4_K_M"],
        ["--leave-output-tensor", "Q4_K_M"],
        ["--output-tensor-type", "q8_0", "--token-embedding-type", "q8_0", "Q4_K_M"],
        [
            "--tensor-type",
            "ffn_down=q5_K",
            "--tensor-type",
            r"blk\.[0-3]\.ffn_down=q8_0",
            "--tensor-type",
            "attn_.*=iq4_nl",
            "Q4_K_M",
        ],
        ["--prune-layers", "1,2", "Q4_K_M"],
        [
            "--override-kv",
            "general.name=str:x",
            "--override-kv",
            "a.b=int:3",
            "--override-kv",
            "c=bool:true",
            "Q6_K",
        ],
        ["--imatrix", "IMATRIX.gguf", "--exclude-weights", "ffn_down", "IQ3_XXS"],
    ],
)
def test_round_trip(argv: list[str]) -> None:
    """import -> export gives llama-quantize options that import to the same recipe."""
    text = import_llama_quantize(argv)
    out = export_llama_quantize(load(text).recipe)
    assert out[0] == "llama-quantize" and out[-3:-1] == ["MODEL.gguf", "OUTPUT.gguf"]
    again = import_llama_quantize([*out[1:-3], out[-1]])
    assert load(again).recipe == load(text).recipe


def test_export_layers_and_notes() -> None:
    text = "recipe: 1\nextends: llama.cpp/Q4_K_M\nrules:\n  - match: 'ffn_down'\n    layers: ['0..2', 5]\n    type: q8_0\n"
    argv, notes = export_llama_quantize_notes(load(text).recipe)
    assert argv == [
        "llama-quantize",
        "--tensor-type",
        r"^blk\.(?:0|1|2|5)\..*(?:ffn_down)=q8_0",
        "MODEL.gguf",
        "OUTPUT.gguf",
        "Q4_K_M",
    ]
    assert notes == [
        "counters: stable: llama-quantize's --tensor-type moves the mix's position-based choices (e.g. which "
        "attn_v/ffn_down layers get more bits); plans can differ where a rule hits those tensors"
    ]


def test_export_refuses_what_llama_quantize_cannot_say() -> None:
    text = (
        "recipe: 1\nbase: q4_K\nrules:\n"
        "  - category: other\n    type: q8_0\n"
        "  - match: 'Attn_Q'\n    type: q8_0\n"
        "  - match: 'ffn'\n    layers: '7/8..'\n    type: q8_0\n"
        "  - category: ffn_down\n    match: 'exps'\n    type: q8_0\n"
        "  - match: 'ffn_up'\n    layers_by: position\n    layers: '..3'\n    type: q8_0\n"
    )
    with pytest.raises(InteropError) as exc:
        export_llama_quantize(load(text).recipe)
    assert str(exc.value) == (
        "cannot export to llama-quantize:\n"
        "  - rule 1: category other ('everything else') has no llama-quantize regex: name the tensors with 'match'\n"
        "  - rule 2: pattern 'Attn_Q' has upper-case letters; llama-quantize lower-cases --tensor-type patterns\n"
        "  - rule 3: layer selector '7/8..' depends on the model's layer count (pass the layer count)\n"
        "  - rule 4: category and match together would need a look-ahead, and llama-quantize ends a pattern at its "
        "first '=': write one regex in 'match'\n"
        "  - rule 5: llama-quantize cannot express layers_by: position (--tensor-type cannot count a tensor's "
        "position among its kind)"
    )
    ok = "recipe: 1\nbase: q4_K\nrules:\n  - match: 'ffn'\n    layers: '7/8..'\n    type: q8_0\n"
    assert export_llama_quantize(load(ok).recipe, n_layers=16)[1:3] == ["--pure", "--tensor-type"]


ARGS = st.sampled_from(
    [
        "--pure",
        "--tensor-type",
        "--tensor-type-file",
        "--output-tensor-type",
        "--token-embedding-type",
        "--leave-output-tensor",
        "--prune-layers",
        "--override-kv",
        "--imatrix",
        "--include-weights",
        "--exclude-weights",
        "--custom-q",
        "--dry-run",
        "attn_v=q8_0",
        "a=b",
        "=",
        "Q4_K_M",
        "15",
        "q8_0",
        "1,2",
        "x=str:y",
        "ffn_(=q4_K",
        "iq4_k",
        "in.gguf",
        "",
        "--",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ARGS, max_size=8))
def test_import_never_crashes(argv: list[str]) -> None:
    try:
        text = import_llama_quantize(argv, base_dir="/nonexistent")
    except InteropError as exc:
        assert str(exc)
        return
    assert load(text).recipe.recipe == 1


def test_export_of_a_chain_merges_it_as_the_compiler_does(tmp_path: Path) -> None:
    """A child's own metadata adds to its parent's (key by key), and scalars come from the nearest
    recipe that sets them: what `recipe plan` applies is what the exported command line says."""
    (tmp_path / "parent.yaml").write_text(
        "recipe: 1\nextends: llama.cpp/Q4_K_M\noutput: q8_0\n"
        "metadata:\n  general.name: {type: str, value: parent}\n  general.url: {type: str, value: p}\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text(
        "recipe: 1\nextends: parent.yaml\ntoken_embedding: q6_K\n"
        "metadata:\n  general.url: {type: str, value: c}\n  general.author: {type: str, value: me}\n"
    )
    argv, _ = export_llama_quantize_notes(load(child).recipe, base_dir=tmp_path)
    kv = [argv[i + 1] for i, a in enumerate(argv) if a == "--override-kv"]
    assert sorted(kv) == ["general.author=str:me", "general.name=str:parent", "general.url=str:c"]
    assert argv[argv.index("--output-tensor-type") + 1] == "q8_0"
    assert argv[argv.index("--token-embedding-type") + 1] == "q6_K"
    assert argv[-1] == "Q4_K_M"


def test_export_reports_an_extends_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("recipe: 1\nextends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("recipe: 1\nextends: a.yaml\n")
    with pytest.raises(InteropError, match="loops back to"):
        export_llama_quantize_notes(load(tmp_path / "a.yaml").recipe, base_dir=tmp_path)
