"""The recipe loader: every error names file:line:col, what was found and what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gguf_recipe.diagnostics import Diagnostic, RecipeError, did_you_mean
from gguf_recipe.recipe import Recipe, load_recipe
from gguf_recipe.recipe.loader import check_recipe, load, parse_comparison

REGEX_HINT = "  = help: regexes are Python 're' syntax, searched in the full tensor name (escape dots: 'ffn_down\\.weight')"


def messages(tmp_path: Path, text: str, name: str = "r.yaml") -> list[str]:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    _, diags = check_recipe(p)
    return [d.format().replace(str(p), name) for d in diags]


def test_valid_recipe_loads_with_positions(tmp_path: Path) -> None:
    text = (
        "# yaml-language-server: $schema=../schema/recipe.schema.json\n"
        "recipe: 1\n"
        "name: demo\n"
        "base: Q4_K\n"
        "rules:\n"
        "  - match: 'ffn_down_exps\\.weight$'\n"
        "    layers: ['3..19', -1]\n"
        "    when: {arch: [deepseek2], experts: '>= 8'}\n"
        "    type: keep\n"
    )
    p = tmp_path / "ok.yaml"
    p.write_text(text)
    lr = load(p)
    assert isinstance(lr.recipe, Recipe)
    assert lr.recipe.base == "Q4_K"
    assert lr.recipe.rules[0].layers == ["3..19", -1]
    pos = lr.source.value(("rules", 0, "layers", 1))
    assert pos is not None and (pos.line, pos.col) == (7, 23)
    key = lr.source.key(("rules", 0, "type"))
    assert key is not None and (key.line, key.col) == (9, 5)
    assert load_recipe(p) == lr.recipe
    assert load_recipe(text) == lr.recipe  # text works too


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "recipe: 1\nbase: q4_K\ntokn_embedding: q8_0\n",
            [
                "r.yaml:3:1: error[R101]: unknown key 'tokn_embedding' in recipe\n  = help: did you mean 'token_embedding'?"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - match: a\n    type: q8_0\n    layer: '1'\n",
            ["r.yaml:6:5: error[R101]: unknown key 'layer' in rule\n  = help: did you mean 'layers'?"],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - match: a\n    type: q8_0\n    when: {archh: llama}\n",
            [
                "r.yaml:6:12: error[R101]: unknown key 'archh' in 'when' condition\n  = help: did you mean 'arch'?"
            ],
        ),
        (
            "base: q4_K\n",
            [
                "r.yaml:1:1: error[R102]: missing key 'recipe' in recipe\n  = help: add 'recipe: 1' (the schema version) at the top"
            ],
        ),
        (
            "recipe: 2\nbase: q4_K\n",
            [
                "r.yaml:1:9: error[R103]: unsupported recipe schema version 2, expected 1\n  = help: write 'recipe: 1'"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - match: a\n",
            [
                "r.yaml:4:5: error[R102]: missing key 'type' in rule\n  = help: add e.g. 'type: q4_K' (or 'type: keep')"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nextends: llama.cpp/Q4_K_M\n",
            [
                "r.yaml:3:1: error[R103]: found both 'base' and 'extends', expected exactly one of them\n"
                "  = help: a recipe either starts from a type ('base') or from another recipe ('extends')"
            ],
        ),
        (
            "recipe: 1\nname: x\n",
            [
                "r.yaml:1:1: error[R102]: missing key 'base' or 'extends' in recipe\n"
                "  = help: add e.g. 'base: q4_K' or 'extends: llama.cpp/Q4_K_M'"
            ],
        ),
        (
            "recipe: 1\nbase: 3\n",
            ["r.yaml:2:7: error[R103]: found an integer 3, expected a string"],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules: {a: 1}\n",
            ["r.yaml:3:8: error[R103]: found a mapping, expected a list"],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - match: a\n    type: q8_0\n    layers: {a: 1}\n",
            ["r.yaml:6:13: error[R103]: found a mapping, expected a list or a string or an integer"],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - category: attn_vv\n    type: q8_0\n",
            [
                "r.yaml:4:15: error[R103]: invalid category 'attn_vv', expected one of: token_embd, output, attn_q, "
                "attn_k, attn_v, attn_qkv, attn_kv_b, attn_output, ffn_up, ffn_gate, ffn_down, other\n"
                "  = help: did you mean 'attn_v'?"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\ncounters: stabel\n",
            [
                "r.yaml:3:11: error[R103]: invalid counters 'stabel', expected one of: stable, llama-quantize\n"
                "  = help: did you mean 'stable'?"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - match: a\n    type: q8_0\n    imatrix: maybe\n",
            ["r.yaml:6:14: error[R103]: found 'maybe', expected true or false"],
        ),
    ],
)
def test_structure_errors(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert messages(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "recipe: 1\nbase: q4_km\n",
            [
                "r.yaml:2:7: error[R104]: unknown type 'q4_km', expected a ggml type\n  = help: did you mean one of 'q4_K', 'q6_K', 'q5_K'?"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\noutput: q8_O\n",
            [
                "r.yaml:3:9: error[R104]: unknown type 'q8_O', expected a ggml type or 'keep'\n  = help: did you mean 'q8_0'?"
            ],
        ),
        (
            "recipe: 1\nbase: keep\n",
            [
                "r.yaml:2:7: error[R104]: unknown type 'keep', expected a ggml type\n  = help: expected one of: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl, iq4_xs, tq1_0, tq2_0, mxfp4, iq3_xxs, iq3_s, iq2_xxs, iq2_xs, iq2_s, iq1_s, iq1_m"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - match: 'blk\\.[0-2]\\.'\n    type: iq5_k_r4\n",
            [
                "r.yaml:5:11: error[R104]: 'iq5_k_r4' is an ik_llama.cpp type; llama.cpp (and gguf-recipe) cannot write it\n"
                "  = help: use a mainline type of about the same size: 'q5_K'"
            ],
        ),
        (
            "recipe: 1\nbase: iq4_k\n",
            [
                "r.yaml:2:7: error[R104]: 'iq4_k' is an ik_llama.cpp type; llama.cpp (and gguf-recipe) cannot write it\n"
                "  = help: use a mainline type of about the same size: 'iq4_xs', 'q4_K'"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\ntoken_embedding: q8_0_r8\n",
            [
                "r.yaml:3:18: error[R104]: 'q8_0_r8' is an ik_llama.cpp row-interleaved (repacked) type; llama.cpp (and "
                "gguf-recipe) cannot write it\n  = help: use 'q8_0' (llama.cpp repacks at load time when it helps)"
            ],
        ),
        (
            "recipe: 1\nbase: q8_K\n",
            [
                "r.yaml:2:7: error[R104]: type 'q8_K' cannot be used for model weights (llama.cpp does not quantize to it)\n"
                "  = help: expected one of: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K, "
                "iq4_nl, iq4_xs, tq1_0, tq2_0, mxfp4, iq3_xxs, iq3_s, iq2_xxs, iq2_xs, iq2_s, iq1_s, iq1_m"
            ],
        ),
        (
            # plain scalar: column of the '(' inside the pattern
            "recipe: 1\nbase: q4_K\nrules:\n  - match: ffn_(down\n    type: q8_0\n",
            [
                "r.yaml:4:16: error[R105]: invalid regex 'ffn_(down': missing ), unterminated subpattern at position 4\n"
                + REGEX_HINT
            ],
        ),
        (
            # single-quoted
            "recipe: 1\nbase: q4_K\nrules:\n  - match: 'ffn_(down\\.weight'\n    type: q8_0\n",
            [
                "r.yaml:4:17: error[R105]: invalid regex 'ffn_(down\\.weight': missing ), unterminated subpattern at position 4\n"
                + REGEX_HINT
            ],
        ),
        (
            # double-quoted with escapes: the position maps through '\\\\'
            'recipe: 1\nbase: q4_K\nrules:\n  - match: "a\\\\.b(("\n    type: q8_0\n',
            [
                "r.yaml:4:19: error[R105]: invalid regex 'a\\.b((': missing ), unterminated subpattern at position 5\n"
                + REGEX_HINT
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - match: 'x[a'\n    type: q8_0\n",
            [
                "r.yaml:4:14: error[R105]: invalid regex 'x[a': unterminated character set at position 1\n"
                + REGEX_HINT
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - match: a\n    layers: ['3..19', '2..x']\n    type: q8_0\n",
            [
                "r.yaml:5:27: error[R107]: invalid layer selector '2..x': unexpected 'x' in layer selector\n"
                "  = help: write e.g. '5', '2..7', '10..', '-4..-1', '7/8..' or '1/8+2.. step 3'"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - match: a\n    layers: '7..2'\n    type: q8_0\n",
            [
                "r.yaml:5:14: error[R107]: invalid layer selector '7..2': empty range: 7..2 selects no layer\n  = help: did you mean '2..7'?"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - match: a\n    when: {experts: '>= x'}\n    type: q8_0\n",
            [
                "r.yaml:5:21: error[R108]: invalid comparison '>= x', expected an integer or '>= N', '> N', '<= N', '< N', "
                "'== N', '!= N'\n  = help: write e.g. 8, '>= 4', '< 8' or '!= 1'"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nrules:\n  - match: a\n    when: {row_multiple_of: q4_kk}\n    type: q8_0\n",
            [
                "r.yaml:5:29: error[R104]: unknown type 'q4_kk', expected a ggml type\n  = help: did you mean one of 'q4_K', 'q6_K', 'q5_K'?"
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nimatrix: {include: ['[a'], exclude: [b]}\n",
            [
                "r.yaml:3:22: error[R105]: invalid regex '[a': unterminated character set at position 0\n"
                + REGEX_HINT,
                "r.yaml:3:28: error[R103]: 'imatrix.include' and 'imatrix.exclude' cannot be used together (as in llama-quantize)",
            ],
        ),
        (
            "recipe: 1\nbase: q4_K\nprune_layers: [1, -2]\n",
            ["r.yaml:3:19: error[R103]: invalid layer -2 in prune_layers, expected a block number >= 0"],
        ),
        (
            "recipe: 1\nbase: q4_K\nmetadata:\n  general.name: {type: int, value: abc}\n",
            ["r.yaml:4:36: error[R109]: metadata 'general.name': found 'abc', expected a value of type int"],
        ),
        (
            "recipe: 1\nbase: q4_K\nmetadata:\n  general.a: {type: float, value: 1.5}\n"
            "  general.b: {type: float, value: .nan}\n  general.c: {type: float, value: -.inf}\n",
            [
                "r.yaml:5:35: error[R109]: metadata 'general.b': nan is not a finite number (NaN and infinities cannot be written)",
                "r.yaml:6:35: error[R109]: metadata 'general.c': -inf is not a finite number (NaN and infinities cannot be written)",
            ],
        ),
    ],
)
def test_semantic_errors(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert messages(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "recipe: [1\n",
            ["r.yaml:2:1: error[R002]: invalid YAML: expected ',' or ']', but got '<stream end>'"],
        ),
        ("recipe: 1\nrecipe: 1\n", ["r.yaml:2:1: error[R002]: invalid YAML: duplicate key 'recipe'"]),
        (
            "",
            [
                "r.yaml:1:1: error[R102]: empty recipe\n  = help: a recipe starts with 'recipe: 1' and has 'base: <type>' or 'extends: <recipe>'"
            ],
        ),
        (
            "- a\n- b\n",
            ["r.yaml:1:1: error[R103]: found a list, expected a mapping (key: value lines) at the top level"],
        ),
        ("recipe: 1\n1: x\n", ["r.yaml:2:1: error[R103]: found key 1 (an integer), expected a string key"]),
    ],
)
def test_syntax_errors(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert messages(tmp_path, text) == expected


def test_json_recipe(tmp_path: Path) -> None:
    data = {"recipe": 1, "base": "q4_K", "rules": [{"match": "ffn_(", "type": "q8_0"}]}
    text = json.dumps(data)
    col = text.index('"ffn_(') + 1
    assert messages(tmp_path, text, "r.json") == [
        f"r.json:1:{col + 5}: error[R105]: invalid regex 'ffn_(': missing ), unterminated subpattern at position 4\n"
        + REGEX_HINT
    ]
    data["rules"] = [{"match": "a", "type": "q8_0"}]
    p = tmp_path / "ok.json"
    p.write_text(json.dumps(data, indent=2))
    assert load(p).recipe.rules[0].type == "q8_0"


def test_json_syntax_error(tmp_path: Path) -> None:
    assert messages(tmp_path, '{"recipe": 1,\n "base": }', "r.json") == [
        "r.json:2:10: error[R002]: invalid JSON: Expecting value"
    ]


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as exc:
        load_recipe(tmp_path / "nope.yaml")
    assert exc.value.diagnostics == [
        Diagnostic(
            f"file not found: {tmp_path / 'nope.yaml'}", "error", str(tmp_path / "nope.yaml"), code="R001"
        )
    ]


def test_errors_are_sorted_and_all_reported(tmp_path: Path) -> None:
    text = "recipe: 1\nbase: q4_K\nrules:\n  - match: 'a('\n    type: q4_kx\n  - match: b\n    type: iq4_k\n"
    out = messages(tmp_path, text)
    assert [m.split(": error")[0] for m in out] == ["r.yaml:4:14", "r.yaml:5:11", "r.yaml:7:11"]


def test_parse_comparison() -> None:
    assert parse_comparison(8) == ("==", 8)
    assert parse_comparison(">= 4") == (">=", 4)
    assert parse_comparison("!=1") == ("!=", 1)
    assert parse_comparison("= 2") == ("==", 2)
    with pytest.raises(ValueError):
        parse_comparison("about 3")


def test_did_you_mean() -> None:
    assert did_you_mean("q4_k", ["q4_K", "q8_0"]) == "did you mean 'q4_K'?"
    assert did_you_mean("zzz", ["q4_K"]) is None


def test_diagnostic_format() -> None:
    d = Diagnostic("unknown type 'x'", "error", "a.yaml", 3, 7, "did you mean 'q4_K'?", code="R104")
    assert d.format() == "a.yaml:3:7: error[R104]: unknown type 'x'\n  = help: did you mean 'q4_K'?"
    assert d.name == "unknown-type"
    assert d.to_json()["code"] == "R104" and d.to_json()["name"] == "unknown-type"
    assert Diagnostic("w", "warning", code="L305").format() == "<recipe>: warning[L305]: w"


def test_builtin_names_load() -> None:
    lr = load("llama.cpp/Q4_K_M")
    assert lr.file == "llama.cpp/Q4_K_M"
    assert lr.recipe.base == "q4_K"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("r.json", '{"$schema": "../schema/recipe.schema.json", "recipe": 1, "base": "q4_0"}'),
        ("r.yaml", "$schema: ../schema/recipe.schema.json\nrecipe: 1\nbase: q4_0\n"),
    ],
)
def test_a_recipe_may_name_its_schema(tmp_path: Path, name: str, text: str) -> None:
    assert messages(tmp_path, text, name) == []


@pytest.mark.parametrize("size", ["70B", "8x7B", "1.5B", "30B.A3B", "256M", "unknown"])
def test_size_classes(tmp_path: Path, size: str) -> None:
    text = f"recipe: 1\nbase: q4_0\nrules:\n  - match: x\n    when: {{size: '{size}'}}\n    type: q8_0\n"
    assert messages(tmp_path, text) == []


def test_a_size_that_is_not_a_size_class_is_an_error(tmp_path: Path) -> None:
    text = "recipe: 1\nbase: q4_0\nrules:\n  - match: x\n    when: {size: [70B, 70G]}\n    type: q8_0\n"
    [msg] = messages(tmp_path, text)
    assert msg.startswith("r.yaml:5:")
    assert "'70G' is not a model size class" in msg


def test_the_schema_lists_the_type_names_for_editors() -> None:
    from gguf_recipe.recipe.model import recipe_json_schema

    schema = json.dumps(recipe_json_schema())
    rule_type = recipe_json_schema()["$defs"]["Rule"]["properties"]["type"]  # type: ignore[index]
    assert {"q4_K", "Q4_K", "q4_k", "keep", "iq4_xs"} <= set(rule_type["enum"])
    assert "q4_km" not in schema
