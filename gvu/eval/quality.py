"""How well a score (the intrinsic reward) ranks correct images above incorrect ones: ROC AUC.

AUC is the Mann-Whitney statistic: the probability that a random correct image scores above a random incorrect
one, ties counting one half. It is None when one class is absent (nothing to rank). Two views:

- pooled (overall, and per tag): mixes prompts, so a prompt that is merely easier to describe (short, common
  words) lifts all of its images; it says whether the reward could serve as a global quality score;
- within-group: AUC inside each prompt's group of images, averaged over the groups that hold both classes.
  This is what GRPO sees, since advantages only compare images of the same prompt.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import numpy as np


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(score of a positive > score of a negative) + 0.5 * P(tie); None when either class is empty."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D and of equal length, got {s.shape} and {y.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; drop or fix them before computing AUC")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)  # average ranks: a tie between a positive and a negative counts one half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_by_tag(scores: Sequence[float], labels: Sequence[bool], tags: Sequence[str]) -> dict:
    """{'overall': auc, 'tags': {tag: auc or None}, 'counts': {tag: (n_correct, n_incorrect)}}."""
    by_tag: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(tags):
        by_tag[t].append(i)
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    return {
        "overall": auc(s, y),
        "tags": {t: auc(s[ix], y[ix]) for t, ix in by_tag.items()},
        "counts": {t: (int(y[ix].sum()), int((~y[ix]).sum())) for t, ix in by_tag.items()},
    }


def within_group_auc(scores: Sequence[float], labels: Sequence[bool],
                     groups: Sequence[Hashable]) -> tuple[float | None, int]:
    """Mean of the per-group AUCs over groups that hold both classes, and how many such groups there were."""
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    aucs = [a for ix in members.values() if (a := auc(s[ix], y[ix])) is not None]
    return (float(np.mean(aucs)) if aucs else None), len(aucs)


def format_auc(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"
