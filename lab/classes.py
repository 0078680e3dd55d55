"""Class checks: every split needs positives and negatives before any GPU time is spent.

Average precision is undefined without positives, and training learns nothing from one class.
``extract`` ends with each split's counts (``format_counts``) and fails with ``ClassCheckError``'s
one line when a split lacks a class; ``campaign`` runs the same check on the cached features
(``check_cached``) before its first round and refuses to start.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from crashsearch.lab.errors import UserError

SPLITS = ("train", "val", "test")


class ClassCheckError(UserError):
    """A split without positives or without negatives; ``str()`` is the one line naming it."""


def split_counts(splits: Iterable[str], labels: Iterable[float]) -> dict[str, tuple[int, int]]:
    """{split: (positives, negatives)} for every split in SPLITS (zeros where a split is empty)."""
    splits, labels = np.asarray(list(splits), dtype=str), np.asarray(list(labels), dtype=float)
    out = {}
    for split in SPLITS:
        mine = labels[splits == split]
        out[split] = (int((mine > 0.5).sum()), int((mine <= 0.5).sum()))
    return out


def format_counts(counts: dict[str, tuple[int, int]]) -> str:
    """``train 35 pos / 35 neg, val 8 pos / 7 neg, test 7 pos / 8 neg``."""
    return ", ".join(f"{s} {p} pos / {n} neg" for s, (p, n) in counts.items())


def check_counts(counts: dict[str, tuple[int, int]], where: str, splits: Sequence[str] = SPLITS) -> None:
    """Raise ClassCheckError naming the first split (of ``splits``) that lacks a class."""
    for split in splits:
        pos, neg = counts.get(split, (0, 0))
        if pos == 0 or neg == 0:
            lacking = "no positives" if pos == 0 and neg else "no negatives" if neg == 0 and pos else "no videos"
            raise ClassCheckError(
                f"{where}: the {split} split has {lacking} ({pos} pos / {neg} neg); every split needs both classes "
                f"(a dataset with too few videos of one class, or whose videos of one class were all skipped)")


def check_cached(home, dataset: str, backbones: Sequence[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """Check the latest complete cache partition of each backbone; returns {backbone: counts}.

    Reads only the split and label columns. Raises ClassCheckError (or the cache's
    FeaturesNotFound) naming the dataset, backbone and split.
    """
    from crashsearch.lab.cache import latest_partition

    out = {}
    for backbone in backbones:
        part = latest_partition(home, dataset, backbone)
        counts = partition_counts(part)
        check_counts(counts, f"{dataset}/{backbone} features ({part.key})")
        out[backbone] = counts
    return out


def partition_counts(part) -> dict[str, tuple[int, int]]:
    """``split_counts`` of a cache partition's videos (``lab.cache.Partition``), reading two columns only."""
    seen, splits, labels = set(), [], []
    for key in part.part_files():
        table = part.read_part(key, columns=["video_id", "split", "label"])
        for vid, split, label in zip(*(table.column(c).to_pylist() for c in ("video_id", "split", "label"))):
            if vid not in seen:  # a video written twice by racing writers counts once
                seen.add(vid)
                splits.append(split)
                labels.append(label)
    return split_counts(splits, labels)
