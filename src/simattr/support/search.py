"""The search of one support answer, without files: where its models go and what they decide.

The search knows nothing about which ranker made the ranking, which dataset it came from or how a model is
trained: it asks a Bank for models at k (the training set with the ranking's top k removed or relabelled), and
the bank asks its `train` callable for those it does not know yet (simattr.support.bank.ModelBank: real models and
their journal; a test: a coin per model).

Two engines (support.engine), both drawing their models from one Bank per answer:
* bisection, the released protocol (docs/method-notes.md): probe k_max first; if the image is not flipped there, the
  support is None (censored at k_max); then k = 0; then bisection over k with a fixed budget of probes. A
  probe at k asks `seeds` models and calls the image flipped when their mean accuracy on it is
  <= threshold. With early stopping a probe stops asking as soon as the remaining models cannot change the
  decision (the decision is the one the full set of models would give, with fewer models).
* adaptive: the same first probes, then models go where the decision is uncertain: each probe adds seeds
  while its posterior probability of "flipped" is between 1 - confidence and confidence (up to seeds_max),
  and the next k is where the fitted curve crosses the threshold, until the bracket is one image wide or
  the answer's budget (max_models) is spent. The support is the crossing of the isotonic fit of every
  model's outcome (simattr.flipcurve).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from .. import flipcurve
from ..errors import SimattrError

#: train(k, seed indices) -> for each, whether the model at k with that seed index gets the test image right
Train = Callable[[int, list[int]], Iterable[bool]]


@dataclass
class Probe:
    k: int
    accuracy: float
    n_models: int
    flipped: bool
    reused: int = 0          # of n_models, how many were already trained elsewhere (the full-data models)

    def as_dict(self) -> dict:
        d = {"k": self.k, "accuracy": round(self.accuracy, 6), "n_models": self.n_models, "flipped": self.flipped}
        if self.reused:
            d["full_data_models"] = self.reused
        return d


class Bank:
    """Every model of one answer, by (k, seed index): whether it gets the test image right.

    `ensure(k, indices)` makes those models known: at k = 0 the full-data models (`full`: seed index -> outcome;
    the training set is the full one there), else one call to `train(k, the indices not known yet)`.
    `trainings` counts the models used that the full-data ones are not. A model depends only on (k, seed index),
    so the same model is the same outcome in any search order."""

    def __init__(self, train: Train, full: Mapping[int, bool] | None = None):
        self.train = train
        self.full = dict(full or {})
        self.outcomes: dict[int, dict[int, bool]] = {}
        self.trainings = 0

    def ensure(self, k: int, indices) -> None:
        have = self.outcomes.setdefault(k, {})
        todo = []
        for i in indices:
            if i in have:
                continue
            if k == 0 and i in self.full:
                have[i] = self.full[i]
                continue
            self.trainings += 1
            todo.append(i)
        if todo:
            for i, ok in zip(todo, self.train(k, todo), strict=True):
                have[i] = bool(ok)

    def count(self, k: int) -> tuple[int, int]:
        """(models, correct) at k."""
        have = self.outcomes.get(k, {})
        return len(have), int(sum(have.values()))

    def grow(self, k: int, n: int) -> tuple[int, int]:
        """Make at least n models known at k (seed indices 0..n-1); (models, correct) there."""
        self.ensure(k, range(n))
        return self.count(k)

    def points(self) -> flipcurve.Points:
        return flipcurve.Points.from_counts({k: self.count(k) for k in self.outcomes})

    def full_used(self, k: int) -> int:
        return sum(1 for i in self.outcomes.get(k, {}) if k == 0 and i in self.full)


# ----------------------------------------------------------------------------------------- bisection
def models_needed(n_correct: int, n_trained: int, n_total: int, threshold: float) -> int:
    """How many more models to train before the probe's decision could be settled (0: settled now).

    The image is flipped when (correct of n_total) / n_total <= threshold.
    """
    limit = math.floor(threshold * n_total + 1e-9)   # flipped iff final correct <= limit
    remaining = n_total - n_trained
    if n_correct + remaining <= limit or n_correct > limit:
        return 0
    to_flip = n_correct + remaining - limit           # this many wrong answers settle "flipped"
    to_keep = limit - n_correct + 1                   # this many right answers settle "not flipped"
    return max(1, min(to_flip, to_keep, remaining))


def bank_probe(bank: Bank, *, seeds: int, threshold: float, early_stop: bool) -> Callable[[int], Probe]:
    """probe(k): `seeds` models of `bank` at k; flipped when their mean accuracy on the image is <= threshold.
    With early stopping it stops adding models once the decision is settled (the same decision, fewer
    models)."""
    if not 0.0 <= threshold < 1.0 or seeds < 1:
        raise SimattrError(f"support.threshold must be in [0, 1) and support.seeds >= 1 (got {threshold}, {seeds})")

    def probe(k: int) -> Probe:
        limit = math.floor(threshold * seeds + 1e-9)   # flipped iff correct models <= limit
        correct, trained = 0, 0
        pending = list(range(seeds))
        while pending:
            n_next = models_needed(correct, trained, seeds, threshold) if early_stop else len(pending)
            if n_next == 0:
                break
            batch, pending = pending[:n_next], pending[n_next:]
            bank.ensure(k, batch)
            correct += sum(bank.outcomes[k][i] for i in batch)
            trained += len(batch)
        # settled (or complete): the decision equals the one all `seeds` models would give
        reused = sum(1 for i in range(trained) if k == 0 and i in bank.full)
        return Probe(k=k, accuracy=correct / trained, n_models=trained, flipped=correct <= limit, reused=reused)

    return probe


def bisect_support(probe: Callable[[int], Probe], k_max: int, budget: int, *, first: Probe | None = None
                   ) -> tuple[int | None, list[Probe]]:
    """Smallest flipping k in 1..k_max by bisection after a k_max probe; None when k_max does not flip.

    With budget >= ceil(log2(k_max)) and a monotone probe the answer is the exact minimum.
    With a smaller budget it is the smallest flipping k seen (an upper bound). `first`: the k_max probe,
    when it was already made.
    """
    if k_max < 1:
        return None, []
    first = first if first is not None else probe(k_max)
    probes = [first]
    if not first.flipped:
        return None, probes
    lo, hi = 0, k_max        # lo: largest k known not to flip (k = 0: the full data, correct by selection)
    for _ in range(budget):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        p = probe(mid)
        probes.append(p)
        if p.flipped:
            hi = mid
        else:
            lo = mid
    return hi, probes


def search(probe: Callable[[int], Probe], k_max: int, budget: int) -> tuple[int | None, list[Probe]]:
    """The protocol: k_max first (not flipped: None); then k = 0 (flipped already without any change: 0,
    the image sits on a seed-noise boundary and bisection's assumption fails); then bisection."""
    if k_max < 1:
        return None, []
    first = probe(k_max)
    if not first.flipped:
        return None, [first]
    zero = probe(0)
    if zero.flipped:
        return 0, [first, zero]
    support, rest = bisect_support(probe, k_max, budget, first=first)
    return support, [first, zero] + rest[1:]


def check_k(support: int, k_max: int, probed: set[int], n: int) -> list[int]:
    """Up to n values of k in (support, k_max) not probed yet, evenly spread, to test the monotonicity that
    bisection assumes (an image flipped at `support` should stay flipped at every larger k)."""
    free = [k for k in range(support + 1, k_max) if k not in probed]
    if n <= 0 or not free:
        return []
    picks = np.linspace(0, len(free) - 1, num=min(n, len(free)) + 2)[1:-1] if len(free) > n else range(len(free))
    return sorted({free[int(round(i))] for i in picks})


def monotone_checks(probe: Callable[[int], Probe], support: int | None, k_max: int, probes: list[Probe],
                    n: int) -> list[Probe]:
    """Probe up to n unprobed k above the support; each one that is not flipped is a monotonicity violation
    (flipped at the support, not at a larger k). Nothing to check when the support is None."""
    if support is None:
        return []
    return [probe(k) for k in check_k(support, k_max, {p.k for p in probes}, n)]


def released_reading(probes: list[Probe]) -> int | None:
    """The released protocol's rule read off a search's probes: None when the first probe (k_max) is not
    flipped by its own models, else the smallest probed k that is."""
    if not probes or not probes[0].flipped:
        return None
    return min(p.k for p in probes if p.flipped)


# ----------------------------------------------------------------------------------------- adaptive
def next_k(lo: int, hi: int, g_lo: float, g_hi: float, threshold: float) -> int:
    """The next k to probe inside the bracket (lo, hi) (hi - lo >= 2): where the fitted curve, drawn straight
    between the bracket's ends, crosses the threshold (regula falsi), kept within the bracket's middle half so
    that every probe at least quarters it (a sharp curve is probed as bisection would)."""
    t = (g_lo - threshold) / max(g_lo - g_hi, 1e-12)
    k = lo + min(max(t, 0.0), 1.0) * (hi - lo)
    quarter = (hi - lo) / 4.0
    k = min(max(k, lo + quarter), hi - quarter)
    return int(min(max(round(k), lo + 1), hi - 1))


def adaptive_search(bank: Bank, k_max: int, *, threshold: float, seeds_min: int, seeds_max: int,
                    max_models: int, confidence: float) -> list[Probe]:
    """Spend at most `max_models` models of one answer where its decision is uncertain.

    A probe at k starts with `seeds_min` models and adds two at a time while the posterior probability that
    the image is flipped there (flipcurve.flip_probability) lies strictly between 1 - confidence and
    confidence, up to `seeds_max`. Order: k_max (not flipped by the fitted curve: censored, stop); k = 0 when
    the full-data models answer it for free (seed set 0), else only once k = 1 is flipped (the sampled images
    are the ones the full-data models get right, so below the smallest probed k the fit assumes an accuracy of
    1 at k = 0 until models there say otherwise); then, while the fitted curve's bracket (lo, hi] around its
    crossing is wider than one image, the k where the fitted curve crosses the threshold inside it (next_k).
    The answer itself is the fitted curve's crossing (flipcurve.estimate); the returned probes record where the
    models went, in order."""
    probes: list[Probe] = []

    def left() -> int:
        return max_models - bank.trainings

    def sure(n: int, c: int) -> bool:
        p = flipcurve.flip_probability(n, c, threshold)
        return p <= 1.0 - confidence or p >= confidence

    def sequential(k: int) -> None:
        n, c = bank.count(k)
        want = max(n, seeds_min)
        free = sum(1 for i in range(n, want) if not (k == 0 and i in bank.full))
        if free > left():
            want = n + left() + sum(1 for i in range(n, want) if k == 0 and i in bank.full)
        n, c = bank.grow(k, want) if want > n else (n, c)
        while n and not sure(n, c) and n < seeds_max and left() > 0:
            n, c = bank.grow(k, min(n + 2, seeds_max, n + left()))
        if n:
            probes.append(Probe(k=k, accuracy=c / n, n_models=n, flipped=c / n <= threshold + 1e-12,
                                reused=bank.full_used(k)))

    sequential(k_max)
    if not probes:
        return probes
    fit = flipcurve.estimate(bank.points(), threshold, n_draws=0)
    if not math.isfinite(fit.support):
        return probes
    if bank.full:           # the full-data models answer k = 0 for free; otherwise k = 0 waits until it matters
        sequential(0)
    while left() > 0:
        pts = bank.points()
        fit = flipcurve.estimate(pts, threshold, n_draws=0)
        if not math.isfinite(fit.support) or fit.lo < 0:        # censored, or flipped at k = 0
            break
        if fit.hi - fit.lo <= 1:
            if fit.lo == 0 and 0 not in bank.outcomes:         # flipped at k = 1: is it flipped at k = 0?
                sequential(0)
                continue
            break
        j = int(np.searchsorted(pts.k, fit.hi))
        g_lo = float(fit.fitted[j - 1]) if j > 0 else 1.0        # nothing probed below: correct at k = 0
        sequential(next_k(int(fit.lo), int(fit.hi), g_lo, float(fit.fitted[j]), threshold))
    return probes
