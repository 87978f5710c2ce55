"""Heatmaps: layer × tensor family → type, legend ordered by bits per weight, fallbacks marked; and the
message when matplotlib (the optional ``[plot]`` extra) is missing."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gguf_recipe.cli import app
from gguf_recipe.compiler import compile_plan
from gguf_recipe.read.heatmap import HeatmapUnavailableError, draw_heatmap, heatmap_grid
from gguf_recipe.read.views import view_of_plan
from helpers.oracle_models import SkeletonFactory

runner = CliRunner()


def test_grid_of_a_plan(oracle_skeleton: SkeletonFactory) -> None:
    # Qwen2.5 0.5B: tied embeddings, rows of 896 -> many row-size fallbacks
    view = view_of_plan(compile_plan("llama.cpp/Q4_K_M", oracle_skeleton("qwen25-0.5b")).plan)
    grid = heatmap_grid(view)
    assert grid.rows[0] == "model" and grid.rows[1:] == [str(i) for i in range(24)]
    assert grid.families[0] == "token_embd"
    assert "attn_norm" not in grid.families  # 1-D tensors are left out
    col = grid.families.index("attn_q")
    assert grid.cells[(1, col)] == ("q5_0", True)  # q4_K -> q5_0: a fallback
    ffn_down = grid.families.index("ffn_down")
    assert grid.cells[(1, ffn_down)][0] == "q6_K"
    assert (0, col) not in grid.cells  # a block family has no cell in the model row


def test_draw_svg_legend_ordered_by_bpw(oracle_skeleton: SkeletonFactory, tmp_path: Path) -> None:
    model = oracle_skeleton("qwen25-0.5b")
    views = [view_of_plan(compile_plan(f"llama.cpp/{m}", model).plan) for m in ("Q4_K_M", "IQ4_XS")]
    out = draw_heatmap(views, tmp_path / "x.svg")
    svg = out.read_text()
    labels = re.findall(r"<!-- ([a-z0-9_]+ \(\d+\.\d\d bpw\)) -->", svg)
    bpws = [float(x.split("(")[1].split()[0]) for x in labels]
    assert labels and bpws == sorted(bpws, reverse=True)  # highest bpw on top
    assert "row-size fallback" in svg
    assert "llama.cpp/Q4_K_M" in svg and "llama.cpp/IQ4_XS" in svg
    png = draw_heatmap(views[:1], tmp_path / "x.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(HeatmapUnavailableError, match=r"\.svg or \.png"):
        draw_heatmap(views, tmp_path / "x.pdf")


def test_cli_plan_heatmap(oracle_skeleton: SkeletonFactory, tmp_path: Path) -> None:
    out = tmp_path / "plan.png"
    r = runner.invoke(
        app, ["plan", "llama.cpp/Q4_K_M", str(oracle_skeleton("phi3-mini-4k")), "--heatmap", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 1000 and f"wrote {out}" in r.stderr


def test_missing_matplotlib_says_what_to_install(
    oracle_skeleton: SkeletonFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    view = view_of_plan(compile_plan("llama.cpp/Q4_K_M", oracle_skeleton("phi3-mini-4k")).plan)
    with pytest.raises(HeatmapUnavailableError, match=r"pip install 'gguf-recipe\[plot\]'"):
        draw_heatmap([view], tmp_path / "x.svg")
    r = runner.invoke(
        app,
        [
            "plan",
            "llama.cpp/Q4_K_M",
            str(oracle_skeleton("phi3-mini-4k")),
            "--heatmap",
            str(tmp_path / "x.svg"),
        ],
    )
    assert r.exit_code == 1
    assert "needs matplotlib: pip install 'gguf-recipe[plot]'" in r.stderr
    assert r.stdout == ""  # refused before planning
    assert not (tmp_path / "x.svg").exists()
