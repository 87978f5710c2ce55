"""Results of an evaluation: :class:`EvalResult` (against a reference) and :class:`PerplexityResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .metrics import covariance, mean_and_uncertainty, median, percentile

__all__ = ["EvalResult", "PerplexityResult"]


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one model on a text, as ``llama-perplexity`` prints it (``PPL ± err``)."""

    model: str
    n_ctx: int
    n_chunks: int
    n_tokens: int  # scored tokens: n_chunks * (n_ctx - 1 - n_ctx // 2)
    ppl: float
    ppl_err: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class EvalResult:
    """One model against a reference, the numbers of ``llama-perplexity --kl-divergence``.

    Uncertainties (``*_err``) are standard errors of the mean, as llama-perplexity computes them.
    ``same_top`` and ``dp_rms`` are fractions (multiply by 100 for llama-perplexity's percent).
    ``kld_values`` holds the per-token KL divergences in scoring order (not compared, not in
    :meth:`to_dict`)."""

    model: str
    reference: str
    n_ctx: int
    n_chunks: int
    n_tokens: int
    ppl: float
    ppl_err: float
    ref_ppl: float
    ref_ppl_err: float
    ln_ppl_ratio: float  # mean ln(PPL(model) / PPL(reference))
    ln_ppl_ratio_err: float
    kld_mean: float
    kld_err: float
    kld_median: float
    kld_p99: float
    kld_max: float
    same_top: float
    same_top_err: float
    dp_rms: float
    dp_rms_err: float
    seconds: float
    file_bytes: int = 0
    bpw: float | None = None
    kld_values: npt.NDArray[np.float64] = field(
        default_factory=lambda: np.zeros(0), repr=False, compare=False
    )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "kld_values"}

    @classmethod
    def from_values(
        cls,
        *,
        model: str,
        reference: str,
        n_ctx: int,
        n_chunks: int,
        nll: npt.NDArray[np.float64],
        ref_nll: npt.NDArray[np.float64],
        kld: npt.NDArray[np.float64],
        same_top: npt.NDArray[np.bool_],
        p_diff: npt.NDArray[np.float64],
        seconds: float,
        file_bytes: int = 0,
        bpw: float | None = None,
    ) -> EvalResult:
        """The summary llama-perplexity prints at the end of ``--kl-divergence``, from per-token values."""
        n = len(nll)
        log_ppl, log_ppl_err = mean_and_uncertainty(float(nll.sum()), float((nll * nll).sum()), n)
        log_base, log_base_err = mean_and_uncertainty(
            float(ref_nll.sum()), float((ref_nll * ref_nll).sum()), n
        )
        cov = covariance(float(nll.sum()), float(ref_nll.sum()), float((nll * ref_nll).sum()), n)
        ratio_var = log_ppl_err**2 + log_base_err**2 - 2.0 * cov
        kld_mean, kld_err = mean_and_uncertainty(float(kld.sum()), float((kld * kld).sum()), n)
        sorted_kld = np.sort(kld)
        p2 = p_diff * p_diff
        mse, mse_err = mean_and_uncertainty(float(p2.sum()), float((p2 * p2).sum()), n)
        rms = math.sqrt(mse)
        top = float(np.count_nonzero(same_top)) / n if n else 0.0
        return cls(
            model=model,
            reference=reference,
            n_ctx=n_ctx,
            n_chunks=n_chunks,
            n_tokens=n,
            ppl=math.exp(log_ppl),
            ppl_err=math.exp(log_ppl) * log_ppl_err,
            ref_ppl=math.exp(log_base),
            ref_ppl_err=math.exp(log_base) * log_base_err,
            ln_ppl_ratio=log_ppl - log_base,
            ln_ppl_ratio_err=math.sqrt(max(ratio_var, 0.0)),
            kld_mean=kld_mean,
            kld_err=kld_err,
            kld_median=median(sorted_kld),
            kld_p99=percentile(sorted_kld, 0.99),
            kld_max=float(sorted_kld[-1]) if n else 0.0,
            same_top=top,
            same_top_err=math.sqrt(top * (1 - top) / (n - 1)) if n > 1 else 0.0,
            dp_rms=rms,
            dp_rms_err=0.5 / rms * mse_err if rms > 0 else 0.0,
            seconds=seconds,
            file_bytes=file_bytes,
            bpw=bpw,
            kld_values=kld,
        )
