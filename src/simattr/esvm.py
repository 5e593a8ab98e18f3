"""Exemplar SVM scores for many queries at once, equal to scikit-learn's per-query LinearSVC.

For each query q (one row of `queries`) the released method fits

    LinearSVC(C=C, class_weight='balanced', loss='squared_hinge', tol=1e-6, max_iter=10000)

on [q; negatives] with labels [1, 0, ..., 0] and scores every negative by `decision_function`. liblinear
regularises the intercept as an extra feature of value 1 (intercept_scaling=1), and balanced class weights
give the single positive the weight (n+1)/2 and every negative (n+1)/(2n). With x~ = [x, 1] the problem is

    min_w  1/2 |w|^2 + Cp (1 - q~.w)_+^2 + Cn sum_i (1 + x~_i.w)_+^2,   Cp = C (n+1)/2, Cn = C (n+1)/(2n)

strictly convex and piecewise quadratic, so it has one minimiser, and once the set of negatives with a
positive loss (the active set, score > -1) is known the minimiser solves one linear system. This module
solves all queries of a class together by finite Newton (Keerthi & DeCoste, JMLR 2005):

1. Warm start (exemplar LDA): the direction u = S^-1 (q - mu) of the negatives' ridge covariance S, then the
   exact best scale and intercept along it. Along one direction the active set is a prefix of the negatives
   sorted by u.x, so all prefixes are tried at once from cumulative sums.
2. Newton steps: solve the least-squares problem of the current active set exactly, take the full step if
   it lowers the objective (exact line search otherwise), repeat until the active set stops changing; then
   the iterate is the minimiser itself, not an approximation. Converged queries leave the batch.
   The system is (d+1) x (d+1) in the primal (its matrix updated by the rows that entered or left the
   active set) when the features are narrow, and (k+1) x (k+1) in the dual (entries gathered from the
   negatives' Gram matrix) when they are wide; the choice is by shape, the answer is the same.

Every step is a batched matrix product, so the same code runs on a GPU (float32) or on CPU. Memory is bounded
by `chunk_size` queries at a time. `esvm_reference` is the scikit-learn loop kept for checking.
"""
from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from . import accel
from .accel import device as accel_device
from .errors import SimattrError

#: the primal system is used while d + 1 is at most this; wider features use the dual
PRIMAL_MAX_DIM = 512
#: the negatives' Gram matrix is kept for the dual when it has at most this many entries
GRAM_MAX_ENTRIES = 64 * 1024 * 1024


@dataclass
class SolveInfo:
    """What a call did, for logs and benchmarks."""
    queries: int = 0
    negatives: int = 0
    backend: str = ""
    newton_steps: list = field(default_factory=list)   # per query
    line_searches: int = 0
    unconverged: int = 0
    active: list = field(default_factory=list)         # final active-set size per query

    def summary(self) -> str:
        steps = np.asarray(self.newton_steps) if self.newton_steps else np.zeros(1)
        act = np.asarray(self.active) if self.active else np.zeros(1)
        return (f"{self.queries} queries x {self.negatives} negatives, {self.backend} backend, Newton steps "
                f"mean {steps.mean():.2f} max {int(steps.max())}, line searches {self.line_searches}, "
                f"active set mean {act.mean():.1f}, unconverged {self.unconverged}")


def _as_tensor(x, name: str, device, dtype) -> torch.Tensor:
    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    if t.ndim != 2:
        raise SimattrError(f"{name}: expected a 2-d array (rows, features), got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise SimattrError(f"{name}: expected numeric features, got dtype {t.dtype}")
    return t.to(device=device, dtype=dtype)


def check_finite(x, what: str) -> None:
    """One-line error naming `what` when features hold NaN or inf."""
    t = torch.as_tensor(x)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise SimattrError(f"{what}: features hold NaN or inf (first at row {bad[0]}, column {bad[1]}); "
                           "expected finite values")


def _default_dtype(dtype) -> torch.dtype:
    if dtype is not None:
        return dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(np.dtype(dtype)))
    return torch.float32


def _pad_rows(rows: torch.Tensor, cols: torch.Tensor, B: int, pad: int) -> torch.Tensor:
    """(row, col) pairs, rows ascending, as a (B, k) matrix of each row's cols padded with `pad`."""
    counts = torch.bincount(rows, minlength=B)
    k = int(counts.max()) if len(rows) else 0
    idx = torch.full((B, k), pad, dtype=torch.long, device=rows.device)
    if k:
        starts = torch.cumsum(counts, 0) - counts
        idx[rows, torch.arange(len(rows), device=rows.device) - starts[rows]] = cols
    return idx


def _take_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table[idx] for a (B, k) index matrix (index_select: several times faster than advanced indexing)."""
    return table.index_select(0, idx.reshape(-1)).view(*idx.shape, *table.shape[1:])


def _rows_where(mask: torch.Tensor, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Column indices of the True entries of each row, padded with `pad`: (idx (B, k), valid (B, k)),
    k = the largest count of a row."""
    rows, cols = mask.nonzero(as_tuple=True)
    idx = _pad_rows(rows, cols, mask.shape[0], pad)
    valid = torch.arange(idx.shape[1], device=mask.device)[None] < mask.sum(1)[:, None]
    return idx, valid


class _Negatives:
    """What every query of one class shares: the augmented negatives, the weights, the LDA solve."""

    def __init__(self, N: torch.Tensor, C: float, ridge: float | None):
        n, d = N.shape
        self.n, self.d, self.D = n, d, d + 1
        self.backend = "primal" if self.D <= PRIMAL_MAX_DIM else "dual"
        if ridge is None:                       # measured best warm start (benchmarks/esvm.py shapes)
            ridge = 0.1 if self.backend == "primal" else 1.0
        self.N = N
        self.Na = torch.cat([N, torch.ones(n, 1, dtype=N.dtype, device=N.device)], 1)
        self.Na_pad = torch.cat([self.Na, torch.zeros(1, d + 1, dtype=N.dtype, device=N.device)], 0)
        self.Cp = C * (n + 1) / 2.0
        self.Cn = C * (n + 1) / (2.0 * n)
        N64 = N.double()
        self.mu = N64.mean(0)
        Xc = N64 - self.mu
        S = Xc.T @ Xc / max(n, 1)
        scale = float(S.diagonal().sum()) / max(1, min(n - 1, d)) if d else 0.0   # mean non-zero eigenvalue
        S += (ridge * scale + 1e-8 * max(scale, 1.0)) * torch.eye(d, dtype=S.dtype, device=S.device)
        self.S_chol = torch.linalg.cholesky(S)
        self._gram = None

    @property
    def gram(self) -> torch.Tensor | None:
        if self._gram is None and self.n * self.n <= GRAM_MAX_ENTRIES:
            self._gram = self.Na @ self.Na.T
        return self._gram


def _warm_start(neg: _Negatives, Q: torch.Tensor, m: int) -> torch.Tensor:
    """Exemplar-LDA direction, then the exact optimal scale a and intercept c along it: w = [a u, c]."""
    dt = Q.dtype
    U = torch.cholesky_solve((Q.double() - neg.mu).T, neg.S_chol).T.to(dt)       # (B, d)
    P = U @ neg.N.T                                                                # (B, n)
    pq = (U * Q).sum(1)
    uu = (U * U).sum(1)
    m = min(m, neg.n)
    v = torch.topk(P, m, dim=1).values.double()                                   # descending
    zeros = torch.zeros(len(Q), 1, dtype=torch.float64, device=Q.device)
    s1 = torch.cat([zeros, torch.cumsum(v, 1)], 1)                                 # prefix sums, j = 0..m
    s2 = torch.cat([zeros, torch.cumsum(v * v, 1)], 1)
    j = torch.arange(m + 1, dtype=torch.float64, device=Q.device)[None]
    Cn, Cp = neg.Cn, neg.Cp
    pq64, uu64 = pq.double()[:, None], uu.double()[:, None]
    haa = uu64 + 2 * Cn * s2 + 2 * Cp * pq64 ** 2
    hac = 2 * Cn * s1 + 2 * Cp * pq64
    hcc = 1 + 2 * Cn * j + 2 * Cp
    ra = 2 * Cp * pq64 - 2 * Cn * s1
    rc = 2 * Cp - 2 * Cn * j
    det = (haa * hcc - hac * hac).clamp_min(1e-300)
    a = (hcc * ra - hac * rc) / det
    c = (haa * rc - hac * ra) / det
    inf = torch.full_like(zeros, math.inf)
    above = torch.cat([inf, v], 1)                                 # v_j (the last active one), j >= 1
    below = torch.cat([v, -inf], 1)                                # v_{j+1} (the first inactive one)
    ok = (a * above + c > -1) & (a * below + c <= -1) & (a > 0)
    ok[:, -1] |= ~ok.any(1)                                        # none fits within m: the widest prefix
    pick = ok.to(torch.int8).argmax(1)
    rows = torch.arange(len(Q), device=Q.device)
    a_, c_ = a[rows, pick].to(dt), c[rows, pick].to(dt)
    bad = ~torch.isfinite(a_) | ~torch.isfinite(c_)
    a_[bad], c_[bad] = 0.0, 0.0
    return torch.cat([a_[:, None] * U, c_[:, None]], 1)


def _chol_solve(L: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Solve (L L^T) X = B for batched lower factors L (two triangular solves; faster than cholesky_solve)."""
    return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, B, upper=False), upper=True)


class _PrimalSystem:
    """Newton systems (I + 2 Cn X_A^T X_A + 2 Cp q q^T) w = b in d + 1 unknowns, one per query.

    A Cholesky factor is kept with the active set it was built for; while few rows have entered or left the
    active set since, the system is solved from that factor by the Woodbury identity, otherwise the matrix is
    updated by exactly the changed rows and factored again. The query's own rank-one term is added by
    Sherman-Morrison, which keeps the factored matrix well conditioned.
    """

    #: at most this many changed rows are handled by Woodbury before refactoring
    woodbury_max = 32

    def __init__(self, neg: _Negatives, B: int, device, dtype):
        self.neg = neg
        self.H = torch.eye(neg.D, dtype=dtype, device=device).repeat(B, 1, 1)
        self.L = self.H.clone()
        self.rhs = torch.zeros(B, neg.D, dtype=dtype, device=device)      # -2 Cn sum over the factored set
        self.act = torch.zeros(B, neg.n, dtype=torch.bool, device=device)

    def keep(self, sel: torch.Tensor) -> None:
        self.H, self.L, self.rhs, self.act = (t.index_select(0, sel) for t in (self.H, self.L, self.rhs, self.act))

    def solve(self, act: torch.Tensor, actp: torch.Tensor, Qa: torch.Tensor) -> torch.Tensor:
        neg = self.neg
        B = len(act)
        rows, cols = (act ^ self.act).nonzero(as_tuple=True)
        entered = act[rows, cols]
        enter = _pad_rows(rows[entered], cols[entered], B, neg.n)
        leave = _pad_rows(rows[~entered], cols[~entered], B, neg.n)
        n_changed = torch.maximum(torch.bincount(rows[entered], minlength=B),
                                  torch.bincount(rows[~entered], minlength=B))
        refactor = n_changed > self.woodbury_max
        sol = torch.empty(B, neg.D, 2, dtype=Qa.dtype, device=Qa.device)
        if not bool(refactor.all()):     # each query by the cheaper route: Woodbury on its old factor ...
            i = (~refactor).nonzero()[:, 0]
            sol_w, ok = self._woodbury(i, enter, leave, Qa)
            _put(sol, i, sol_w)
            refactor = refactor.index_fill(0, i[~ok], True)
        if bool(refactor.any()):         # ... or the matrix updated by the changed rows and factored again
            i = refactor.nonzero()[:, 0]
            _put(sol, i, self._refactor(i, act, enter, leave, Qa))
        wq = sol[:, :, 1]
        rho = (2 * neg.Cp) * actp.to(Qa.dtype)
        wb = sol[:, :, 0] + rho[:, None] * wq
        s = (Qa * wb).sum(1) / (1 + rho * (Qa * wq).sum(1))
        return wb - (rho * s)[:, None] * wq

    def _rows(self, i, idx):
        """The changed rows of queries i (padding rows are zero), without the columns that are padding in all."""
        idx = _sub(idx, i)
        if idx.shape[1]:
            idx = idx[:, :int((idx < self.neg.n).sum(1).max())]
        return _take_rows(self.neg.Na_pad, idx)

    def _refactor(self, i, act, enter, leave, Qa):
        """Update the matrix by the rows that entered (+) and left (-), factor it again; (B, D, 2) solutions."""
        neg, a2 = self.neg, 2 * self.neg.Cn
        H, rhs, act = _sub(self.H, i), _sub(self.rhs, i), _sub(act, i)    # H is self.H when i is everyone
        Xp, Xm = self._rows(i, enter), self._rows(i, leave)
        rhs = rhs - a2 * (Xp.sum(1) - Xm.sum(1))
        H.baddbmm_(Xp.mT, Xp, alpha=a2)
        if Xm.shape[1]:
            H.baddbmm_(Xm.mT, Xm, alpha=-a2)
        L, info = torch.linalg.cholesky_ex(H)
        if bool((info != 0).any()):                    # lost definiteness to rounding: rebuild exactly
            X2 = _take_rows(neg.Na_pad, _rows_where(act, pad=neg.n)[0])
            H = torch.eye(neg.D, dtype=X2.dtype, device=X2.device).repeat(len(X2), 1, 1)
            H.baddbmm_(X2.mT, X2, alpha=a2)
            L = torch.linalg.cholesky(H)
        if len(i) == len(self.H):
            self.H, self.L, self.rhs, self.act = H, L, rhs, act
        else:
            for mine, new in ((self.H, H), (self.L, L), (self.rhs, rhs), (self.act, act)):
                mine.index_copy_(0, i, new)
        return _chol_solve(L, torch.stack([rhs, _sub(Qa, i)], 2))

    def _woodbury(self, i, enter, leave, Qa):
        """[rhs, q] solved with the kept factor of H_L, by two symmetric Woodbury updates: the rows that entered
        (H1 = H_L + 2Cn Xp^T Xp) then the rows that left (H1 - 2Cn Xm^T Xm, still positive definite). Each
        needs one small Cholesky (I/(2Cn) +- X H^-1 X^T); `ok` is False where one fails (the caller refactors)."""
        a2 = 2 * self.neg.Cn
        L, rhs, Qa = _sub(self.L, i), _sub(self.rhs, i), _sub(Qa, i)
        Xp, Xm = self._rows(i, enter), self._rows(i, leave)
        rhs = rhs - a2 * (Xp.sum(1) - Xm.sum(1))
        rp = Xp.shape[1]
        V = _chol_solve(L, torch.cat([torch.stack([rhs, Qa], 2), Xp.mT, Xm.mT], 2))   # H_L^-1 [b, q, Xp^T, Xm^T]
        ok = torch.ones(len(Qa), dtype=torch.bool, device=Qa.device)
        if rp:                                         # H1^-1 v = V - Yp (I/a2 + Xp Yp)^-1 Xp V, Yp = H_L^-1 Xp^T
            Yp, rest = V[:, :, 2:2 + rp], torch.cat([V[:, :, :2], V[:, :, 2 + rp:]], 2)
            C, info = torch.linalg.cholesky_ex(torch.eye(rp, dtype=Qa.dtype, device=Qa.device) / a2 + Xp @ Yp)
            ok &= info == 0
            V = rest - Yp @ _chol_solve(C, Xp @ rest)
        if Xm.shape[1]:                                # H2^-1 v = V + Ym (I/a2 - Xm Ym)^-1 Xm V, Ym = H1^-1 Xm^T
            Ym, rest = V[:, :, 2:], V[:, :, :2]
            C, info = torch.linalg.cholesky_ex(torch.eye(Xm.shape[1], dtype=Qa.dtype, device=Qa.device) / a2
                                               - Xm @ Ym)
            ok &= info == 0
            V = rest + Ym @ _chol_solve(C, Xm @ rest)
        return V[:, :, :2], ok


def _sub(t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """t[i] along the first dimension; t itself (no copy) when i is every row in order."""
    return t if len(i) == len(t) else t.index_select(0, i)


def _put(t: torch.Tensor, i: torch.Tensor, v: torch.Tensor) -> None:
    """t[i] = v along the first dimension."""
    if len(i) == len(t):
        t.copy_(v)
    else:
        t.index_copy_(0, i, v)


class _DualSystem:
    """The (k+1) x (k+1) system of the active negatives and the query, from the negatives' Gram matrix."""

    def __init__(self, neg: _Negatives, B: int, device, dtype):
        self.neg = neg
        self.KQ = None                                  # (B, n) query-negative products, made once

    def keep(self, sel: torch.Tensor) -> None:
        if self.KQ is not None:
            self.KQ = self.KQ.index_select(0, sel)

    def solve(self, act: torch.Tensor, actp: torch.Tensor, Qa: torch.Tensor) -> torch.Tensor:
        neg = self.neg
        B, dt = len(Qa), Qa.dtype
        idx, valid = _rows_where(act)
        k = idx.shape[1]
        X = None
        K = neg.gram
        if K is not None:
            Kaa = K[idx[:, :, None], idx[:, None, :]]
        else:
            X = _take_rows(neg.Na, idx)
            Kaa = X @ X.transpose(1, 2)
        if self.KQ is None:
            self.KQ = Qa @ neg.Na.T
        kq = self.KQ.gather(1, idx)
        G = torch.empty(B, k + 1, k + 1, dtype=dt, device=Qa.device)
        G[:, 0, 0] = (Qa * Qa).sum(1)
        G[:, 0, 1:] = -kq
        G[:, 1:, 0] = -kq
        G[:, 1:, 1:] = Kaa
        sel = torch.cat([actp[:, None], valid], 1)
        G *= (sel[:, :, None] & sel[:, None, :]).to(dt)
        lam = torch.cat([torch.full((B, 1), 1 / (2 * neg.Cp), dtype=dt, device=Qa.device),
                         torch.full((B, k), 1 / (2 * neg.Cn), dtype=dt, device=Qa.device)], 1)
        lam = torch.where(sel, lam, torch.ones_like(lam))
        G += torch.diag_embed(lam)
        beta = torch.cholesky_solve(sel.to(dt)[:, :, None], torch.linalg.cholesky(G))[:, :, 0]
        dense = torch.zeros(B, neg.n, dtype=dt, device=Qa.device)
        dense.scatter_add_(1, idx, beta[:, 1:] * valid)          # padding adds zero (no overwrite)
        return beta[:, :1] * Qa - dense @ neg.Na


def _margins(neg: _Negatives, W: torch.Tensor) -> torch.Tensor:
    """1 + the scores W x~ of every negative (B, n): a negative is active where this is > 0. The 1 is folded into
    the intercept (one matrix product, no extra pass over the (B, n) array)."""
    W1 = W.clone()
    W1[:, -1] += 1
    return W1 @ neg.Na.T


def _objective(neg: _Negatives, W, M, zq):
    """The primal objective from the margins M = 1 + scores."""
    hinge = torch.linalg.vector_norm(M.clamp_min(0), dim=1)
    return 0.5 * (W * W).sum(1) + neg.Cn * hinge * hinge + neg.Cp * (1 - zq).clamp_min(0) ** 2


def _line_search(neg: _Negatives, W, dW, M, dM, zq, dzq, iters: int = 30) -> torch.Tensor:
    """argmin over t in [0, 1] of the objective along W + t dW (convex, piecewise quadratic): bracketed Newton."""
    lo = torch.zeros(len(W), dtype=W.dtype, device=W.device)
    hi = torch.ones_like(lo)
    t = torch.full_like(lo, 0.5)
    wd, dd = (W * dW).sum(1), (dW * dW).sum(1)
    for _ in range(iters):
        Mt = M + t[:, None] * dM
        m = Mt > 0
        r = Mt.clamp_min_(0)
        zqt = zq + t * dzq
        mp = zqt < 1
        g = wd + t * dd + 2 * neg.Cn * (r * dM).sum(1) - 2 * neg.Cp * torch.where(mp, 1 - zqt, 0) * dzq
        h = dd + 2 * neg.Cn * (m * dM * dM).sum(1) + 2 * neg.Cp * mp * dzq * dzq
        lo = torch.where(g < 0, t, lo)
        hi = torch.where(g >= 0, t, hi)
        tn = t - g / h.clamp_min(1e-30)
        t = torch.where((tn > lo) & (tn < hi), tn, 0.5 * (lo + hi))
    return t.clamp(0, 1)


def _rtol(dt: torch.dtype) -> float:
    """Relative changes below this are rounding, not progress."""
    return 1e-6 if dt == torch.float32 else 1e-12


def _solve_chunk(neg: _Negatives, Q: torch.Tensor, max_iter: int, warm_m: int
                 ) -> tuple[torch.Tensor, SolveInfo]:
    info = SolveInfo(queries=len(Q))
    B = len(Q)
    dt, dev = Q.dtype, Q.device
    Qa = torch.cat([Q, torch.ones(B, 1, dtype=dt, device=dev)], 1)
    W = _warm_start(neg, Q, warm_m)
    M = _margins(neg, W)                             # 1 + scores of the negatives
    zq = (W * Qa).sum(1)
    f = _objective(neg, W, M, zq)
    out = torch.empty(B, neg.n, dtype=dt, device=dev)
    steps = torch.zeros(B, dtype=torch.long)
    live = torch.arange(B, device=dev)
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    system = (_PrimalSystem if neg.backend == "primal" else _DualSystem)(neg, B, dev, dt)
    act, actp = M > 0, zq < 1
    for it in range(max_iter):
        Wn = system.solve(act, actp, Qa)
        Mn = _margins(neg, Wn)
        zqn = (Wn * Qa).sum(1)
        fn = _objective(neg, Wn, Mn, zqn)
        steps[live[~finished].cpu()] += 1
        worse = fn > f * (1 + 100 * _rtol(dt))          # a real overshoot, not rounding in the sum
        if bool(worse.any()):
            info.line_searches += int(worse.sum())
            b = worse.nonzero()[:, 0]
            t = _line_search(neg, W[b], Wn[b] - W[b], M[b], Mn[b] - M[b], zq[b], zqn[b] - zq[b])
            Wn[b] = W[b] + t[:, None] * (Wn[b] - W[b])
            Mn[b] = M[b] + t[:, None] * (Mn[b] - M[b])
            zqn[b] = zq[b] + t * (zqn[b] - zq[b])
            fn[b] = _objective(neg, Wn[b], Mn[b], zqn[b])
        act_n, actp_n = Mn > 0, zqn < 1
        same = ~(act_n ^ act).any(1) & (actp_n == actp) & ~worse
        tiny = (Wn - W).norm(dim=1) <= _rtol(dt) * Wn.norm(dim=1)
        stalled = ((f - fn) <= _rtol(dt) * f) & ~worse      # no progress left at this precision
        done = same | tiny | stalled
        W, M, zq, f, act, actp = Wn, Mn, zqn, fn, act_n, actp_n
        new = done & ~finished
        if bool(new.any()):                  # a finished query's answer is final; later steps leave it alone
            out[live[new]] = M[new] - 1
            finished |= new
        n_fin = int(finished.sum())
        if n_fin == len(live):
            live = live[:0]
            break
        if n_fin * 2 >= len(live):           # drop finished queries from the batch (a copy of its state)
            keep = (~finished).nonzero()[:, 0]
            live, W, M, zq, f, Qa, act, actp = (t.index_select(0, keep) for t in (live, W, M, zq, f, Qa, act, actp))
            system.keep(keep)
            finished = finished.index_select(0, keep)
    if len(live):
        rest = ~finished
        info.unconverged += int(rest.sum())
        out[live[rest]] = M[rest] - 1
    info.newton_steps.extend(steps.tolist())
    info.active.extend((out > -1).sum(1).tolist())
    return out, info


def exemplar_svm_scores(queries, negatives, C: float, *, chunk_size: int, device=None, dtype=None,
                        max_iter: int = 50, ridge: float | None = None,
                        warm_start_size: int = 512, what: str = "features", progress=None,
                        return_info: bool = False):
    """(B, n) exemplar-SVM scores of `negatives` for every row of `queries` (numpy arrays or torch tensors).

    Equal, up to the solver tolerance, to scikit-learn's LinearSVC(C, class_weight='balanced',
    squared hinge, tol=1e-6) fitted on [query; negatives] and evaluated by decision_function(negatives).
    `device`: a torch device, or None / "auto" for accel.default_device() (CUDA when present, else CPU).
    `dtype`: compute dtype (default float32; float16/bfloat16 inputs are computed in float32). `chunk_size`:
    queries solved together (memory: a few chunk_size x n arrays, plus chunk_size x (d+1)^2 in the primal or
    chunk_size x k^2 in the dual, k <= n). `what` names the input in errors. Returns the same kind of array as
    `queries` (numpy float32 for numpy input), and a SolveInfo when `return_info`.
    """
    as_numpy = not isinstance(queries, torch.Tensor)
    device = accel_device(device)
    dt = _default_dtype(dtype)
    if dt in (torch.float16, torch.bfloat16):
        dt = torch.float32
    check_finite(queries, f"{what} (queries)")
    check_finite(negatives, f"{what} (negatives)")
    Q = _as_tensor(queries, f"{what} (queries)", device, dt)
    N = _as_tensor(negatives, f"{what} (negatives)", device, dt)
    if Q.shape[1] != N.shape[1]:
        raise SimattrError(f"{what}: queries have {Q.shape[1]} features but negatives {N.shape[1]}")
    if C <= 0:
        raise SimattrError(f"esvm C must be > 0, got {C}")
    B, n = len(Q), len(N)
    if device.type == "cpu":
        accel.keep_freed_memory()
    info = SolveInfo(queries=B, negatives=n)
    out = torch.empty(B, n, dtype=dt, device=device)
    if B and n:
        neg = _Negatives(N, C, ridge)
        info.backend = neg.backend
        if neg.backend == "dual":
            neg.gram                                   # made once, before any worker needs it
        step = max(1, int(chunk_size))
        chunks = [slice(s, s + step) for s in range(0, B, step)]
        bar = None
        if progress:
            bar = tqdm(total=B, desc="esvm", unit="query", leave=False)

        def solve(sl):
            got = _solve_chunk(neg, Q[sl], max_iter, warm_start_size)
            if bar is not None:
                bar.update(sl.stop - sl.start if sl.stop <= B else B - sl.start)
            return got

        # On CPU, chunks run side by side, one intra-op thread each: batched LAPACK calls (Cholesky), nonzero
        # and gathers use one core each, so this is ~15% faster than chunk after chunk on all cores, and each
        # chunk's arithmetic no longer depends on how many threads a job has.
        threads = torch.get_num_threads()
        workers = min(threads, len(chunks)) if device.type == "cpu" else 1
        if workers > 1:
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(workers) as pool:
                    results = list(pool.map(solve, chunks))
            finally:
                torch.set_num_threads(threads)
        else:
            results = [solve(sl) for sl in chunks]
        for sl, (scores, part) in zip(chunks, results):
            out[sl] = scores
            info.newton_steps += part.newton_steps
            info.active += part.active
            info.line_searches += part.line_searches
            info.unconverged += part.unconverged
        if bar is not None:
            bar.close()
    result = out.cpu().numpy().astype(np.float32) if as_numpy else out
    return (result, info) if return_info else result


def esvm_reference(queries, negatives, C: float, *, tol: float, max_iter: int,
                   progress: bool = False) -> np.ndarray:
    """The released per-query scikit-learn loop (one LinearSVC per query), kept for checking."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC
    queries, negatives = np.asarray(queries), np.asarray(negatives)
    m, n = len(queries), len(negatives)
    out = np.empty((m, n), dtype=np.float32)
    if n == 0:
        return out
    y = np.zeros(n + 1, dtype=np.int64)
    y[0] = 1
    neg64 = negatives.astype(np.float64)
    for i in tqdm(range(m), desc="esvm_reference", unit="query", disable=not progress, leave=False):
        X = np.vstack([queries[i:i + 1].astype(np.float64), neg64])
        svm = LinearSVC(C=C, class_weight="balanced", loss="squared_hinge", tol=tol, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            svm.fit(X, y)
        out[i] = svm.decision_function(neg64)
    return out
