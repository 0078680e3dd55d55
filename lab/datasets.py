"""Dataset manifests: which videos exist, their labels, event times and splits.

Two manifest layouts are read:

- **Nexar** (the Kaggle "nexar-collision-prediction" layout): ``<root>/train.csv`` with the header
  ``id,time_of_event,time_of_alert,target`` (times empty for negatives) and the videos at
  ``<root>/train/<id zero-padded to 5>.mp4``. The synthetic generator (``lab.synth``) writes it.
- **generic**: any CSV with the header ``path,label,event_time`` (optionally ``alert_time``);
  ``path`` is relative to the CSV's folder or absolute.

Loading is forgiving per row and strict per file: a bad row or a missing video becomes one line in
``Dataset.problems`` and is skipped, while a file that cannot be read or has an unknown header
raises DatasetError. Row numbers in problem lines are line numbers in the file (the header is
line 1), so they match what an editor shows.

Splits are assigned by video with ``stratified_split``: deterministic for a seed, independent of
row order, stratified by label. Either layout may carry an optional ``split`` column (train, val
or test; DAD and CCD come with official splits): a row that names its split keeps it, the rows
that leave it empty are split as above.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from crashsearch.lab.errors import UserError

SPLITS = ("train", "val", "test")
NEXAR_COLUMNS = ("id", "time_of_event", "time_of_alert", "target")
GENERIC_COLUMNS = ("path", "label", "event_time")
_EXPECTED = f"expected the header '{','.join(NEXAR_COLUMNS)}' (Nexar) or '{','.join(GENERIC_COLUMNS)}' (generic)"


class DatasetError(UserError):
    """A manifest that cannot be used as a whole (missing, unreadable, unknown header); names the file."""


@dataclass(frozen=True)
class VideoItem:
    id: str  # Nexar: zero-padded id "00042"; generic: the path stem (made unique if needed)
    path: Path  # absolute path of the video file
    label: int  # 1 collision or near-collision, 0 negative
    event_time: float | None  # seconds from the video start; None for negatives
    alert_time: float | None  # earliest time the event was predictable, if annotated
    split: str  # "train" | "val" | "test"
    split_given: bool = False  # the manifest named the split (else stratified_split chose it)


@dataclass
class Dataset:
    name: str
    root: Path
    layout: str  # "nexar" | "generic"
    videos: list[VideoItem]
    problems: list[str] = field(default_factory=list)  # one line per skipped row or missing video
    manifest: Path | None = None  # the CSV this was read from

    def by_split(self, split: str) -> list[VideoItem]:
        """The videos of one split ("train", "val" or "test"), in manifest order."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return [v for v in self.videos if v.split == split]

    def manifest_hash(self) -> str:
        """sha256 hex of the parsed manifest: ids, paths (relative to the root), labels and times.

        Splits chosen by the seed are left out on purpose: they depend on the split seed, not on the
        videos, and the feature cache keyed by this hash holds per-video features that any split can
        use. A split the manifest names is part of the data and is hashed.
        """
        rows = []
        for v in sorted(self.videos, key=lambda v: v.id):
            try:
                rel = v.path.relative_to(self.root).as_posix()
            except ValueError:
                rel = v.path.as_posix()
            rows.append([v.id, rel, v.label, v.event_time, v.alert_time] + ([v.split] if v.split_given else []))
        canonical = json.dumps({"layout": self.layout, "rows": rows}, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def summary(self) -> str:
        """One line: name, layout, counts per split and label, number of problems."""
        parts = []
        for split in SPLITS:
            items = self.by_split(split)
            parts.append(f"{split} {len(items)} ({sum(v.label for v in items)} pos)")
        return (f"{self.name} [{self.layout}]: {len(self.videos)} videos, " + ", ".join(parts)
                + f"; {len(self.problems)} problem(s)")


# ---- splits ---------------------------------------------------------------------------------

MIN_VAL_VIDEOS, MIN_VAL_PER_CLASS = 20, 5  # below either, AP on the validation split barely tells cells apart


def validation_warning(dataset: "Dataset") -> str | None:
    """One line when the validation split is too small for AP to separate cells, else None.

    The rule: fewer than MIN_VAL_VIDEOS (20) videos, or fewer than MIN_VAL_PER_CLASS (5) positives
    or negatives. AP then takes few distinct values (with 2 positives among 4 videos every ranking
    that puts them first scores 1.0), so many cells tie at the top and a leader is luck."""
    val = dataset.by_split("val")
    pos = sum(1 for v in val if v.label == 1)
    neg = len(val) - pos
    if len(val) >= MIN_VAL_VIDEOS and min(pos, neg) >= MIN_VAL_PER_CLASS:
        return None
    return (f"the validation split of {dataset.name!r} has {len(val)} videos ({pos} positives / {neg} negatives): "
            f"too few for AP to separate cells (needs at least {MIN_VAL_VIDEOS} videos and {MIN_VAL_PER_CLASS} "
            f"of each class); expect ties at the top and treat the leaderboard as a smoke test")


def stratified_split(ids_and_labels: Iterable[tuple[str, int]], seed: int = 0,
                     fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)) -> dict[str, str]:
    """Assign each id to "train", "val" or "test", stratified by label.

    Each label's ids are ordered by a seeded hash of the id (so row order does not matter), then
    cut: test first, val next, the rest train. A label with at least 3 videos gets at least one
    in each split. Returns {id: split}. Raises ValueError on duplicate ids or bad fractions.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise UserError(f"fractions {fractions} must be three non-negative numbers summing to 1 (train, val, test)")
    by_label: dict[object, list[str]] = {}
    seen: set[str] = set()
    for vid, label in ids_and_labels:
        if vid in seen:
            raise UserError(f"duplicate id {vid!r} in split input")
        seen.add(vid)
        by_label.setdefault(label, []).append(vid)

    def key(vid: str) -> str:
        return hashlib.sha256(f"{seed}:{vid}".encode()).hexdigest()

    out: dict[str, str] = {}
    for ids in by_label.values():
        ids = sorted(ids, key=lambda v: (key(v), v))
        n = len(ids)
        n_val, n_test = int(n * fractions[1] + 0.5), int(n * fractions[2] + 0.5)
        if n >= 3:  # every split must see both classes, or its AP is undefined
            n_val, n_test = max(1, n_val), max(1, n_test)
            while n - n_val - n_test < 1:  # and training needs at least one
                if n_val >= n_test:
                    n_val -= 1
                else:
                    n_test -= 1
        n_val, n_test = min(n_val, n), min(n_test, max(0, n - n_val))
        for i, vid in enumerate(ids):
            out[vid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


# ---- loading --------------------------------------------------------------------------------

@dataclass
class _Row:
    id: str
    path: Path
    label: int
    event_time: float | None
    alert_time: float | None
    where: str  # "train.csv row 7", for problem lines
    split: str | None = None  # from the optional split column


def load_dataset(path: str | Path, seed: int = 0) -> Dataset:
    """Load a dataset from its folder or its manifest CSV, detecting the layout from the header.

    A folder is searched for ``train.csv``, else for a single CSV with a known header. Bad rows
    and missing videos are skipped and listed in ``problems``. ``seed`` picks the split.
    Raises DatasetError if no manifest is found or it cannot be read or has an unknown header.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    csv_path = _find_manifest(path.resolve()) if path.is_dir() else path.resolve()
    header, rows = _read_csv(csv_path)
    layout = _layout(csv_path, header)
    root = csv_path.parent
    problems: list[str] = []
    parse = _parse_nexar if layout == "nexar" else _parse_generic
    parsed = parse(csv_path, header, rows, problems)
    if layout == "generic":
        parsed = _unique_generic_ids(parsed)

    present = [row for row in parsed if _exists(row, root, problems)]
    prefix = f"{csv_path.name} row "  # every problem line starts so; keep them in file order
    problems.sort(key=lambda p: int(p[len(prefix):].split(":", 1)[0]))
    splits = stratified_split([(r.id, r.label) for r in present if r.split is None], seed=seed)
    videos = [VideoItem(r.id, r.path, r.label, r.event_time, r.alert_time, r.split or splits[r.id], r.split is not None)
              for r in present]
    name = root.name if path.is_dir() or csv_path.stem == "train" else csv_path.stem
    return Dataset(name=name, root=root, layout=layout, videos=videos, problems=problems, manifest=csv_path)


def _exists(row: _Row, root: Path, problems: list[str]) -> bool:
    """True if the row's video file exists; otherwise reports it."""
    if row.path.is_file():
        return True
    shown = row.path.relative_to(root).as_posix() if row.path.is_relative_to(root) else str(row.path)
    problems.append(f"{row.where}: video {shown} not found")
    return False


def _find_manifest(folder: Path) -> Path:
    train = folder / "train.csv"
    if train.is_file():
        return train
    known = []
    for candidate in sorted(folder.glob("*.csv")):
        try:
            header, _ = _read_csv(candidate)
            _layout(candidate, header)
        except DatasetError:
            continue
        known.append(candidate)
    if len(known) == 1:
        return known[0]
    if not known:
        raise DatasetError(f"{folder}: no manifest found; expected train.csv or one CSV with the header "
                           f"'{','.join(GENERIC_COLUMNS)}'")
    raise DatasetError(f"{folder}: several manifests ({', '.join(p.name for p in known)}); pass the CSV file itself")


def _first_non_utf8_line(path: Path) -> int:
    """The number of the first line of ``path`` that is not UTF-8 (0 if every line is)."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def _read_csv(csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The normalised header and (line number, cells) for each non-blank row."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    except UnicodeDecodeError:  # name the line, not a byte offset (the decoder's offset is per chunk)
        line = _first_non_utf8_line(csv_path)
        raise DatasetError(f"{csv_path}: line {line} is not UTF-8 text; save the manifest as UTF-8") from None
    except (OSError, csv.Error) as exc:
        raise DatasetError(f"{csv_path}: cannot read the manifest ({exc})") from exc
    if not header:
        raise DatasetError(f"{csv_path}: empty file; {_EXPECTED}")
    return [c.strip().lower() for c in header], rows


def _layout(csv_path: Path, header: list[str]) -> str:
    if set(NEXAR_COLUMNS) <= set(header):
        return "nexar"
    if set(GENERIC_COLUMNS) <= set(header):
        return "generic"
    raise DatasetError(f"{csv_path}: unknown header '{','.join(header)}'; {_EXPECTED}")


def _cells(csv_path: Path, header: list[str], rows, problems: list[str]):
    """Yield (where, {column: value}) for rows with the header's column count; report the others."""
    for line, cells in rows:
        where = f"{csv_path.name} row {line}"
        if len(cells) != len(header):
            problems.append(f"{where}: {len(cells)} columns, expected {len(header)}")
            continue
        yield where, {k: v.strip() for k, v in zip(header, cells)}


def _label(value: str, column: str) -> int:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if number not in (0.0, 1.0):
        raise UserError(f"{column} {value!r} is not 0 or 1")
    return int(number)


def _split(value: str) -> str | None:
    """The optional split column: empty (the seed decides) or one of SPLITS."""
    value = value.strip().lower()
    if value and value not in SPLITS:
        raise UserError(f"split {value!r} is not one of {', '.join(SPLITS)} (or empty)")
    return value or None


def _time(value: str, column: str) -> float | None:
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{column} {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise UserError(f"{column} {value!r} is not a time in seconds (finite, >= 0)")
    return number


def _parse_nexar(csv_path: Path, header, rows, problems: list[str]) -> list[_Row]:
    out, seen = [], {}
    for where, rec in _cells(csv_path, header, rows, problems):
        try:
            if not rec["id"].isdigit():
                raise UserError(f"id {rec['id']!r} is not a non-negative integer")
            vid = f"{int(rec['id']):05d}"
            if vid in seen:
                raise UserError(f"duplicate id {vid} (first at {seen[vid]})")
            label = _label(rec["target"], "target")
            event = _time(rec["time_of_event"], "time_of_event")
            alert = _time(rec["time_of_alert"], "time_of_alert")
            if label == 1 and event is None:
                raise UserError("positive (target 1) without time_of_event")
            split = _split(rec.get("split", ""))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        seen[vid] = where
        if label == 0:
            event = alert = None
        out.append(_Row(vid, csv_path.parent / "train" / f"{vid}.mp4", label, event, alert, where, split))
    return out


def _parse_generic(csv_path: Path, header, rows, problems: list[str]) -> list[_Row]:
    out, seen = [], {}
    for where, rec in _cells(csv_path, header, rows, problems):
        try:
            if not rec["path"]:
                raise UserError("empty path")
            video = Path(rec["path"]).expanduser()
            video = (video if video.is_absolute() else csv_path.parent / video).resolve()
            if video in seen:
                raise UserError(f"duplicate path {rec['path']} (first at {seen[video]})")
            label = _label(rec["label"], "label")
            event = _time(rec["event_time"], "event_time")
            alert = _time(rec.get("alert_time", ""), "alert_time")
            if label == 1 and event is None:
                raise UserError("positive (label 1) without event_time")
            split = _split(rec.get("split", ""))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        seen[video] = where
        if label == 0:
            event = alert = None
        out.append(_Row(video.stem, video, label, event, alert, where, split))
    return out


def _unique_generic_ids(rows: list[_Row]) -> list[_Row]:
    """Ids are path stems; stems shared by several files get a short hash of the path appended."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.id] = counts.get(r.id, 0) + 1
    for r in rows:
        if counts[r.id] > 1:
            r.id = f"{r.id}-{hashlib.sha1(str(r.path).encode()).hexdigest()[:8]}"
    return rows
