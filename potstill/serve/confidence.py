"""Confidence and out-of-distribution scores: pure numpy functions of logits and embeddings.

- `fit_temperature(logits, y)`: temperature scaling (Guo et al. 2017), the T > 0 minimising the
  validation NLL of softmax(logits / T). NLL is convex in beta = 1/T (a log-sum-exp of functions
  linear in beta minus a linear term), so a golden-section search over log beta finds the global
  minimum; no optimiser state, no torch.
- `confidence_scores(probs, kind)`: higher means surer. `max_prob`, `margin` (top-1 minus top-2
  probability), `entropy` (1 - H(p) / log C, in [0, 1]).
- OOD scores of an embedding against the training inputs' embeddings, higher = more unusual:
  `MahalanobisStats` (class means + one shared, shrunk covariance, Lee et al. 2018; score = the
  smallest squared Mahalanobis distance to a class mean) and `KNNStats` (cosine distance to the
  k-th nearest training embedding, Sun et al. 2022). Both are fitted once at calibration time and
  saved with `save_ood` / `load_ood` as one .npz file.
- `ece(probs, y)`: expected calibration error with equal-width bins over the top probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

ScoreKind = Literal["max_prob", "margin", "entropy"]


# -- probabilities -------------------------------------------------------------------------------
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, C) logits -> (N, C) probabilities of softmax(logits / T), in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of labels `y` (N,) under softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[:, 0]
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y: Sequence[int], t_min: float = 0.2,
                    t_max: float = 20.0, tol: float = 1e-6) -> float:
    """The temperature T in [t_min, t_max] minimising the NLL of `y` under softmax(logits / T).

    Golden-section search over log(1/T); exact to `tol` in log space because the NLL is convex
    in 1/T. Returns 1.0 when there is nothing to fit (no rows). The lower bound matters when the
    validation rows are all right: the NLL then keeps falling as T -> 0, and a tiny T saturates
    the softmax in float64 so that every confidence ties at 1.0 and no threshold can rank them.
    """
    y = np.asarray(y, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    if len(y) == 0:
        return 1.0
    lo, hi = math.log(1 / t_max), math.log(1 / t_min)  # search over log beta
    f = lambda lb: nll(logits, y, 1.0 / math.exp(lb))  # noqa: E731
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return 1.0 / math.exp((a + b) / 2)


# -- confidence scores ---------------------------------------------------------------------------
def confidence_scores(probs: np.ndarray, kind: ScoreKind = "max_prob") -> np.ndarray:
    """(N, C) probabilities -> (N,) confidence, higher = surer, each in [0, 1]."""
    p = np.asarray(probs, dtype=np.float64)
    if kind == "max_prob":
        return p.max(axis=-1)
    if kind == "margin":
        if p.shape[-1] < 2:
            return np.ones(p.shape[0])
        top2 = -np.partition(-p, 1, axis=-1)[:, :2]  # (N, 2): top-1, top-2
        return top2[:, 0] - top2[:, 1]
    if kind == "entropy":
        C = p.shape[-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
        return 1.0 - h / math.log(C) if C > 1 else np.ones(p.shape[0])
    raise ValueError(f"unknown confidence score {kind!r}")


def ece(probs: np.ndarray, y: Sequence[int], n_bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width bins of the top probability of
    (share of rows in the bin) x |accuracy in the bin - mean top probability in the bin|.
    Bins are (lo, hi], the first also holds 0."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if len(y) == 0:
        return 0.0
    conf = p.max(axis=-1)
    correct = (p.argmax(axis=-1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


# -- out-of-distribution scores ------------------------------------------------------------------
@dataclass
class MahalanobisStats:
    """Class means (C, D) and the precision matrix (D, D) of the shared covariance."""

    means: np.ndarray
    precision: np.ndarray
    method: str = "mahalanobis"

    @classmethod
    def fit(cls, emb: np.ndarray, classes: Sequence[int], n_classes: int,
            shrinkage: float | None = None) -> "MahalanobisStats":
        """Means per class (classes with no rows get the global mean) and a shared covariance of
        the centred embeddings, shrunk towards a scaled identity (Ledoit-Wolf when `shrinkage` is
        None, so it stays invertible with fewer rows than dimensions)."""
        from sklearn.covariance import LedoitWolf, ShrunkCovariance

        x = np.asarray(emb, dtype=np.float64)
        c = np.asarray(classes)
        means = np.tile(x.mean(axis=0), (n_classes, 1))
        for k in np.unique(c):
            means[k] = x[c == k].mean(axis=0)
        centred = x - means[c]
        est = (LedoitWolf(assume_centered=True) if shrinkage is None
               else ShrunkCovariance(shrinkage=shrinkage, assume_centered=True)).fit(centred)
        return cls(means.astype(np.float32), est.precision_.astype(np.float64))

    def score(self, emb: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) smallest squared Mahalanobis distance to a class mean."""
        x = np.asarray(emb, dtype=np.float64)
        P = self.precision
        m = self.means.astype(np.float64)
        # d(x, mu)^2 = x'Px - 2 x'P mu + mu'P mu, for every (row, class) pair: (N, C)
        xP = x @ P
        d = (xP * x).sum(-1)[:, None] - 2 * xP @ m.T + ((m @ P) * m).sum(-1)[None, :]
        return np.maximum(d.min(axis=-1), 0.0)


@dataclass
class KNNStats:
    """L2-normalised training embeddings (N, D); score = 1 - cosine similarity to the k-th
    nearest of them."""

    bank: np.ndarray
    k: int = 10
    method: str = "knn"

    @classmethod
    def fit(cls, emb: np.ndarray, k: int = 10) -> "KNNStats":
        return cls(_normalise(emb).astype(np.float32), int(min(k, len(emb))))

    def score(self, emb: np.ndarray, chunk: int = 1024) -> np.ndarray:
        q = _normalise(emb).astype(np.float32)
        out = np.empty(len(q), dtype=np.float64)
        for s in range(0, len(q), chunk):
            sims = q[s : s + chunk] @ self.bank.T  # (n, N)
            kth = -np.partition(-sims, self.k - 1, axis=-1)[:, self.k - 1]
            out[s : s + chunk] = 1.0 - kth
        return out


class NoOOD:
    """`ood_method: none`: every input scores 0 (never escalated as out of distribution)."""

    method = "none"

    def score(self, emb: np.ndarray) -> np.ndarray:
        return np.zeros(len(emb))


OODStats = MahalanobisStats | KNNStats | NoOOD


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def fit_ood(method: str, emb: np.ndarray, classes: Sequence[int], n_classes: int,
            k: int = 10) -> OODStats:
    if method == "mahalanobis":
        return MahalanobisStats.fit(emb, classes, n_classes)
    if method == "knn":
        return KNNStats.fit(emb, k)
    if method == "none":
        return NoOOD()
    raise ValueError(f"unknown OOD method {method!r}")


def save_ood(stats: OODStats, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    if isinstance(stats, MahalanobisStats):
        np.savez(tmp, method="mahalanobis", means=stats.means, precision=stats.precision)
    elif isinstance(stats, KNNStats):
        np.savez(tmp, method="knn", bank=stats.bank, k=stats.k)
    else:
        np.savez(tmp, method="none")
    tmp.replace(path)


def load_ood(path: Path) -> OODStats:
    with np.load(path, allow_pickle=False) as z:
        method = str(z["method"])
        if method == "mahalanobis":
            return MahalanobisStats(z["means"], z["precision"])
        if method == "knn":
            return KNNStats(z["bank"], int(z["k"]))
        return NoOOD()
