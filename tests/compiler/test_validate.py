"""Row validation: non-finite input is refused; quantized bytes are judged exactly as ggml_validate_row_data."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from gguf_recipe.quants.validate import RowValidationError, check_finite_rows, validate_quantized_rows
from helpers.oracle_models import ORACLE

T = GGMLQuantizationType
INDEX: dict[str, Any] = json.loads((ORACLE / "quant" / "index.json").read_text())


@pytest.mark.parametrize("type_name", sorted(INDEX["types"]))
def test_agrees_with_ggml_validate_row_data_on_every_oracle_vector(type_name: str) -> None:
    info = INDEX["types"][type_name]
    data = np.load(ORACLE / "quant" / info["file"])
    for vec in info["vectors"]:
        q = data[vec["q_key"]]
        try:
            validate_quantized_rows(q, type_name, "blk.0.w")
            accepted = True
        except RowValidationError as exc:
            accepted = False
            assert "blk.0.w" in str(exc) and "row " in str(exc)
        assert accepted == vec["ggml_validate_row_data"], vec["name"]


def _blocks(qtype: GGMLQuantizationType, rows: int, nblocks: int) -> np.ndarray:
    return np.zeros((rows, nblocks * GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)


def test_names_tensor_row_block_and_field() -> None:
    q = _blocks(T.Q4_1, 3, 4)
    q[2, 1 * 20 + 2 : 1 * 20 + 4] = [0x00, 0x7C]  # block 1 of row 2: m = +inf
    q[2, 3 * 20 : 3 * 20 + 2] = [0x01, 0x7C]  # a later NaN d is not the first problem
    with pytest.raises(RowValidationError, match=r"ffn_up.*Q4_1.*inf fp16 m at row 2, block 1"):
        validate_quantized_rows(q, "Q4_1", "ffn_up")


@pytest.mark.parametrize(
    ("qtype", "offset"),
    [(T.Q2_K, 80), (T.Q3_K, 108), (T.Q4_K, 2), (T.Q6_K, 208), (T.TQ1_0, 52), (T.TQ2_0, 64), (T.IQ4_XS, 0)],
)
def test_fp16_field_positions(qtype: GGMLQuantizationType, offset: int) -> None:
    q = _blocks(qtype, 2, 2)
    validate_quantized_rows(q, qtype, "t")
    size = GGML_QUANT_SIZES[qtype][1]
    q[1, size + offset : size + offset + 2] = [0x00, 0xFC]  # -inf
    with pytest.raises(RowValidationError, match="row 1, block 1"):
        validate_quantized_rows(q, qtype, "t")


def test_nan_scale_is_reported_as_nan() -> None:
    q = _blocks(T.Q8_0, 1, 2)
    q[0, 34:36] = [0x00, 0x7E]
    with pytest.raises(RowValidationError, match="nan fp16 d at row 0, block 1"):
        validate_quantized_rows(q, T.Q8_0, "t")


def test_iq1_m_scale_is_gathered_from_the_top_nibbles() -> None:
    q = _blocks(T.IQ1_M, 1, 1)
    sc = np.array([0x0000, 0x0000, 0xC000, 0x7000], dtype="<u2")  # scale bits 0x7C00 -> +inf
    q[0, 48:56] = sc.view(np.uint8)
    with pytest.raises(RowValidationError, match="inf fp16 scale at row 0, block 0"):
        validate_quantized_rows(q, T.IQ1_M, "t")
    sc[3] = 0x3000  # 0x3C00 = 1.0
    q[0, 48:56] = sc.view(np.uint8)
    validate_quantized_rows(q, T.IQ1_M, "t")


def test_mxfp4_exponent_255_is_invalid() -> None:
    q = _blocks(T.MXFP4, 2, 3)
    q[0, 17 * 2] = 0xFE
    validate_quantized_rows(q, T.MXFP4, "t")
    q[1, 17 * 2] = 0xFF
    with pytest.raises(RowValidationError, match="row 1, block 2"):
        validate_quantized_rows(q, T.MXFP4, "t")


@pytest.mark.parametrize(
    ("qtype", "bad", "what"),
    [
        (T.F32, np.float32(np.inf), "inf value"),
        (T.F32, np.float32(np.nan), "nan value"),
        (T.F16, np.float16(np.inf), "inf fp16 value"),
        (T.BF16, np.uint16(0x7FC0), "nan value"),
        (T.BF16, np.uint16(0xFF80), "inf value"),
    ],
)
def test_float_types_report_the_element(qtype: GGMLQuantizationType, bad: Any, what: str) -> None:
    values = np.zeros((2, 8), dtype=np.asarray(bad).dtype)
    validate_quantized_rows(values.view(np.uint8), qtype, "t")
    values[1, 5] = bad
    with pytest.raises(RowValidationError, match=f"{what} at row 1, element 5"):
        validate_quantized_rows(values.view(np.uint8), qtype, "t")


def test_bf16_nan_is_reported_before_an_earlier_inf() -> None:
    values = np.zeros((1, 4), dtype=np.uint16)
    values[0, 0] = 0x7F80
    values[0, 3] = 0x7FC1
    with pytest.raises(RowValidationError, match="nan value at row 0, element 3"):
        validate_quantized_rows(values.view(np.uint8), T.BF16, "t")


def test_wrong_row_size_is_rejected() -> None:
    with pytest.raises(RowValidationError, match="invalid row size 19"):
        validate_quantized_rows(np.zeros((1, 19), dtype=np.uint8), "Q4_0", "t")


def test_finite_rows_pass() -> None:
    check_finite_rows(np.ones((3, 64), dtype=np.float32), "t")
    check_finite_rows(np.zeros((0, 64), dtype=np.float32), "t")


@pytest.mark.parametrize(("value", "kind"), [(np.nan, "NaN"), (np.inf, r"\+inf"), (-np.inf, "-inf")])
def test_non_finite_input_names_tensor_row_and_column(value: float, kind: str) -> None:
    x = np.ones((5, 96), dtype=np.float32)
    x[3, 70] = value
    x[4, 2] = np.nan  # later rows do not matter
    with pytest.raises(RowValidationError, match=rf"attn_q.*\({kind}\) at row 3, column 70"):
        check_finite_rows(x, "attn_q")


def test_non_finite_scan_reports_global_row_across_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    import gguf_recipe.quants.validate as v

    monkeypatch.setattr(v, "_SCAN_VALUES", 64)
    x = np.zeros((10, 32), dtype=np.float32)
    x[7, 1] = np.inf
    with pytest.raises(RowValidationError, match="row 7, column 1"):
        check_finite_rows(x, "t")


def test_error_is_a_value_error() -> None:
    assert issubclass(RowValidationError, ValueError)
