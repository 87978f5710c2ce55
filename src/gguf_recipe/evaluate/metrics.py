"""The numbers of llama.cpp's ``llama-perplexity --kl-divergence``, in numpy.

Per scored position ``i`` (a model's logits ``z`` over the vocabulary, the next token ``t``):

* NLL: ``logsumexp(z) - z[t]``; perplexity is ``exp(mean NLL)``;
* KL divergence from the reference: ``sum_v p_ref[v] * (log p_ref[v] - log p_model[v])`` over the
  tokens with ``log p_ref[v] > -16`` (llama-perplexity's cut-off: its stored reference keeps 16 nats
  below the top; the rest of the vocabulary moves SmolLM2's Q8_0 mean by ~0.5%);
* same top token: ``argmax z == argmax z_ref``;
* Δp: ``p_model[t] - p_ref[t]``.

Log-softmax is computed in float32 relative to the row maximum (exact near the top of the
distribution, where the probability mass is), every sum over the vocabulary is accumulated in float64.
The summary statistics and their uncertainties are llama-perplexity's (``mean_and_uncertainty``,
``covariance``, ``percentile``), so the printed numbers compare one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["LOG_P_MIN", "ChunkStats", "Workspace", "mean_and_uncertainty", "percentile"]

LOG_P_MIN = -16.0  # reference log-probabilities at or below this are left out of the KL divergence

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]


def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """llama-perplexity's mean and its standard error from the sums of ``x`` and ``x**2``."""
    if count < 1:
        return 0.0, 0.0
    f = total / count
    df = total2 / count - f * f
    return f, (math.sqrt(df / (count - 1)) if df > 0 and count > 10 else 0.0)


def covariance(sum_a: float, sum_b: float, sum_ab: float, count: int) -> float:
    """llama-perplexity's covariance of the two means (0 under 10 values)."""
    if count < 10:
        return 0.0
    return (sum_ab / count - (sum_a / count) * (sum_b / count)) / (count - 1)


def percentile(sorted_values: F64, fraction: float) -> float:
    """llama-perplexity's percentile: linear interpolation between the two nearest sorted values."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = fraction * (n - 1)
    ip = int(p)
    p -= ip
    return float((1 - p) * sorted_values[ip] + p * sorted_values[min(ip + 1, n - 1)])


def median(sorted_values: F64) -> float:
    n = len(sorted_values)
    if n == 0:
        return 0.0
    return float(
        sorted_values[n // 2] if n % 2 else 0.5 * (sorted_values[n // 2] + sorted_values[n // 2 - 1])
    )


class Workspace:
    """Scratch buffers of one chunk's shape, reused from chunk to chunk (no per-chunk allocation of
    ``rows x n_vocab`` arrays)."""

    def __init__(self, rows: int, n_vocab: int) -> None:
        self.w = np.empty((rows, n_vocab), np.float32)  # logits - row max
        self.e = np.empty((rows, n_vocab), np.float32)  # exp(w), then products
        self.p = np.empty((rows, n_vocab), np.float32)  # reference probabilities
        self.lr = np.empty((rows, n_vocab), np.float32)  # reference log-probabilities

    def shape_for(self, rows: int) -> Workspace:
        if rows == self.w.shape[0]:
            return self
        return Workspace(rows, self.w.shape[1])


@dataclass
class LogSoftmax:
    """A chunk's log-softmax, as ``w - lse`` with ``w = z - max z`` (kept in the workspace)."""

    w: F32  # view of the workspace: z - max
    lse: F64  # log(sum(exp(w))) per row
    top: npt.NDArray[np.intp]  # argmax per row
    nll: F64  # lse - w[target] per row (float64)


def log_softmax(logits: F32, targets: I32, ws: Workspace) -> LogSoftmax:
    """Row-wise log-softmax of ``logits`` (rows x n_vocab, float32) relative to the row maximum, the
    argmax and the NLL of ``targets``. ``logits`` is only read (it may be llama.cpp's own buffer)."""
    rows = logits.shape[0]
    r = np.arange(rows)
    top = logits.argmax(axis=1)
    mx = logits[r, top]
    w = ws.w[:rows]
    np.subtract(logits, mx[:, None], out=w)
    e = ws.e[:rows]
    np.exp(w, out=e)
    lse = np.log(e.sum(axis=1, dtype=np.float64))
    nll = lse - (logits[r, targets].astype(np.float64) - mx.astype(np.float64))
    return LogSoftmax(w, lse, top, nll)


@dataclass
class ChunkStats:
    """Per-position values of one chunk."""

    nll: F64
    kld: F64
    same_top: npt.NDArray[np.bool_]
    p_diff: F64


def reference_probs(ref_logprobs: npt.NDArray[np.float16], ws: Workspace) -> tuple[F32, F32, F64]:
    """The reference's stored (float16) log-probabilities, renormalized so that they sum to one again
    (rounding to float16 shifts each by up to 2**-11 relative; renormalizing makes the KL divergence's
    error second order in that rounding: a model against its own logits gives a mean of ~4e-7 on
    SmolLM2-135M, 1e-4 of Q8_0's KL divergence; llama-perplexity's own 16-bit format has a floor of the
    same order).

    Returns ``(log p, p, sum p * log p)`` with ``log p`` and ``p`` in the workspace, ``p`` (and so the
    sum) zero where ``log p <= LOG_P_MIN``."""
    rows = ref_logprobs.shape[0]
    lr = ws.lr[:rows]
    lr[...] = ref_logprobs
    p = ws.p[:rows]
    np.exp(lr, out=p)
    corr = np.log(p.sum(axis=1, dtype=np.float64))
    lr -= corr.astype(np.float32)[:, None]
    p *= np.exp(-corr).astype(np.float32)[:, None]
    p[lr <= LOG_P_MIN] = 0.0
    e = ws.e[:rows]
    np.multiply(p, lr, out=e)
    neg_entropy = e.sum(axis=1, dtype=np.float64)
    return lr, p, neg_entropy


def chunk_kld(
    logits: F32,
    targets: I32,
    ref_logprobs: npt.NDArray[np.float16],
    ref_top: I32,
    ref_nll: F64,
    ws: Workspace,
) -> ChunkStats:
    """KL divergence, NLL, same-top and Δp of one chunk's scored rows against the reference's."""
    ls = log_softmax(logits, targets, ws)
    _, p, neg_entropy = reference_probs(ref_logprobs, ws)
    e = ws.e[: logits.shape[0]]
    # sum p_ref * log p_model = sum p_ref * (w - lse) = sum p_ref * w - lse * sum p_ref
    np.multiply(p, ls.w, out=e)
    cross = e.sum(axis=1, dtype=np.float64)
    psum = p.sum(axis=1, dtype=np.float64)
    kld = neg_entropy - cross + ls.lse * psum
    p_diff = np.exp(-ls.nll) - np.exp(-ref_nll)
    return ChunkStats(ls.nll, kld, ls.top == ref_top, p_diff)
