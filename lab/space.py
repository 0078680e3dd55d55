"""The discrete configuration space that proposals live in.

A space is four groups of axes (arch, loss, train, data), each axis a finite list of values,
read from YAML (default: ``lab/spaces/collision.yaml``, 108,000 cells). A cell has a canonical
id, its mixed-radix index over the full space (first axis most significant), and a canonical
dict of axis values; dedup is on the id. ``validate`` turns untrusted input (an LLM's JSON, a
CSV row) into a Cell or raises InvalidCell with one line an agent can read.

A restricted space (``restrict(backbone=[...])``) samples and validates only the allowed values
but keeps the parent's ids, so histories from both stay comparable.
"""
from __future__ import annotations

import math
import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from crashsearch.lab.errors import UserError
from crashsearch.lab.schema import BASE_COLUMNS

GROUPS = ("arch", "loss", "train", "data")
DEFAULT_SPACE = Path(__file__).parent / "spaces" / "collision.yaml"


class SpaceError(UserError):
    """A malformed space file; the message names the key."""


class InvalidCell(UserError):
    """A proposal that is not a cell of the space; ``reason`` is one readable line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Axis:
    name: str
    group: str
    values: tuple  # the full list: defines the radix and the ids
    help: str = ""
    allowed: tuple | None = None  # a restriction; None means all values

    @property
    def choices(self) -> tuple:
        return self.values if self.allowed is None else self.allowed

    def coerce(self, raw: Any) -> Any:
        """Map raw input ("0.001", 1e-3, "32", "GRU") onto one of this axis's values, or raise."""
        for value in self.values:
            if _same(value, raw):
                if value not in self.choices:
                    raise InvalidCell(
                        f"{self.name}={raw!r} is outside the current sub-space; allowed: {_fmt(self.choices)}"
                    )
                return value
        raise InvalidCell(f"{self.name}={raw!r} is not a value of this axis; allowed: {_fmt(self.choices)}")


def _same(value: Any, raw: Any) -> bool:
    if isinstance(raw, bool):
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(raw)
        except (TypeError, ValueError):
            return False
        return math.isclose(float(value), number, rel_tol=1e-9, abs_tol=1e-12)
    return isinstance(raw, str) and raw.strip().lower() == str(value).lower()


def _fmt(values: Iterable) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


@dataclass(frozen=True)
class Cell:
    """One point of the space: canonical id plus the axis values (in axis order)."""

    id: int
    values: Mapping[str, Any] = field(hash=False, compare=False)

    def __getitem__(self, axis: str) -> Any:
        return self.values[axis]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)

    @property
    def arch_group(self) -> str:
        """backbone/encoder: the unit of the paper's architecture ANOVA."""
        return f"{self.values['backbone']}/{self.values['encoder']}"

    @property
    def focal_gamma(self) -> float:
        """0.0 for BCE (focal with gamma 0 is BCE), else the gamma in ``focal_<gamma>``."""
        return loss_gamma(self.values["loss"])

    def __repr__(self) -> str:
        inner = " ".join(f"{k}={v}" for k, v in self.values.items())
        return f"Cell({self.id}: {inner})"


def loss_gamma(loss: str) -> float:
    """Gamma of a loss value: ``bce`` -> 0.0, ``focal_2.5`` -> 2.5."""
    if loss == "bce":
        return 0.0
    if loss.startswith("focal_"):
        return float(loss.split("_", 1)[1])
    raise UserError(f"unknown loss {loss!r}")


MAX_CELLS = 2 ** 63 - 1  # cell ids are int64 in the history
MAX_ALIASES = 1000  # YAML aliases a space file may use
MAX_NODES = 100_000  # values a space file may expand to through aliases ("billion laughs")


class _YamlRefused(Exception):
    """A space file construct refused before it is built (the message names key and line)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and more than MAX_ALIASES aliases."""

    def __init__(self, stream):
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _YamlRefused(f"line {mark.line + 1}: more than {MAX_ALIASES} YAML aliases (an expansion bomb?)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise _YamlRefused(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep)


MAX_SPACE_BYTES = 1 << 20  # the 108,000-cell space is 2 KB; a space file of a megabyte is a mistake


def _read_space_file(path: Path) -> bytes:
    """The bytes of a space file; raises SpaceError (one line) unless it is a regular file of at most
    MAX_SPACE_BYTES (/dev/zero, a FIFO or a disk image would otherwise be read until memory runs out)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below as not a regular file
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SpaceError(f"space file not found: {path}") from None
    except IsADirectoryError:
        raise SpaceError(f"{path}: is a folder, not a space file") from None
    except OSError as exc:
        raise SpaceError(f"{path}: cannot open ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise SpaceError(f"{path}: is a folder, not a space file")
        if not stat.S_ISREG(info.st_mode):
            raise SpaceError(f"{path}: not a regular file (a device, pipe or socket); a space is a YAML file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_SPACE_BYTES + 1)
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SPACE_BYTES:
        raise SpaceError(f"{path}: larger than {MAX_SPACE_BYTES // 1024} KB; a space file is a short YAML list of axes")
    return data


def _expanded_size(node: yaml.Node, sizes: dict) -> int:
    """Nodes in ``node`` with every alias expanded (shared nodes counted each time they appear)."""
    key = id(node)
    if key in sizes:
        if sizes[key] is None:
            raise _YamlRefused(f"line {node.start_mark.line + 1}: a YAML alias refers to itself")
        return sizes[key]
    sizes[key] = None  # in progress
    if isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(v, sizes) for v in node.value)
    else:
        total = 1
    sizes[key] = min(total, MAX_NODES + 1)  # capped: the sum cannot blow up either
    return sizes[key]


def _non_finite(value: Any, key: str) -> str:
    """The key of the first NaN or infinite float inside ``value`` ("" if none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return key
    if isinstance(value, dict):
        for k, v in value.items():
            found = _non_finite(v, f"{key}.{k}")
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _non_finite(v, f"{key}[{i}]")
            if found:
                return found
    return ""


class Space:
    """A finite product of axes with canonical cell ids. See the module docstring."""

    def __init__(self, name: str, axes: list[Axis], fixed: Mapping[str, Any] | None = None, description: str = ""):
        if not axes:
            raise SpaceError("a space needs at least one axis")
        names = [a.name for a in axes]
        if len(set(names)) != len(names):
            raise SpaceError(f"duplicate axis names: {names}")
        self.name = name
        self.axes = list(axes)
        self.fixed = dict(fixed or {})
        self.description = description
        self._by_name = {a.name: a for a in self.axes}
        # radix weights of the full space: the last axis varies fastest
        self._weights = []
        weight = 1
        for axis in reversed(self.axes):
            self._weights.append(weight)
            weight *= len(axis.values)
        self._weights.reverse()
        self.full_size = weight

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None) -> "Space":
        """Read a space YAML (default: the collision space). Raises SpaceError naming the bad key."""
        path = Path(path) if path else DEFAULT_SPACE
        data = _read_space_file(path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise SpaceError(f"{path}: line {line} is not UTF-8 text") from None
        loader = None
        try:
            loader = _StrictLoader(text)  # its reader refuses control characters at once: inside the try
            node = loader.get_single_node()
            if node is not None and _expanded_size(node, {}) > MAX_NODES:
                raise _YamlRefused(f"its YAML aliases expand to more than {MAX_NODES:,} values (an expansion bomb?)")
            raw = loader.construct_document(node) if node is not None else None
        except _YamlRefused as exc:
            raise SpaceError(f"{path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise SpaceError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        finally:
            if loader is not None:
                loader.dispose()
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<dict>") -> "Space":
        if not isinstance(raw, dict):
            raise SpaceError(f"{source}: the top level must be a mapping with 'groups'")
        groups = raw.get("groups")
        if not isinstance(groups, dict) or not groups:
            raise SpaceError(f"{source}: key 'groups' must map group names ({', '.join(GROUPS)}) to axes")
        axes = []
        for group, group_axes in groups.items():
            if group not in GROUPS:
                raise SpaceError(f"{source}: groups.{group} is not one of {', '.join(GROUPS)}")
            if not isinstance(group_axes, dict) or not group_axes:
                raise SpaceError(f"{source}: groups.{group} must map axis names to value lists")
            for name, spec in group_axes.items():
                key = f"groups.{group}.{name}"
                if isinstance(spec, list):
                    spec = {"values": spec}
                if not isinstance(spec, dict) or not isinstance(spec.get("values"), list):
                    raise SpaceError(f"{source}: {key}.values must be a list")
                values = spec["values"]
                if not values:
                    raise SpaceError(f"{source}: {key}.values is empty")
                if len(set(map(str, values))) != len(values):
                    raise SpaceError(f"{source}: {key}.values has duplicates")
                if any(not isinstance(v, (str, int, float)) or isinstance(v, bool) for v in values):
                    raise SpaceError(f"{source}: {key}.values must be strings or numbers")
                if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                    raise SpaceError(f"{source}: {key}.values holds a NaN or infinite number")
                if str(name) in BASE_COLUMNS:
                    raise SpaceError(f"{source}: {key}: axis name {name!r} is a column of the history; rename the axis")
                axes.append(Axis(name=str(name), group=group, values=tuple(values), help=str(spec.get("help", ""))))
        fixed = raw.get("fixed", {}) or {}
        if not isinstance(fixed, dict):
            raise SpaceError(f"{source}: key 'fixed' must be a mapping")
        bad = _non_finite(fixed, "fixed")
        if bad:
            raise SpaceError(f"{source}: {bad} is a NaN or infinite number")
        size = math.prod(len(a.values) for a in axes)
        if size > MAX_CELLS:
            raise SpaceError(f"{source}: key 'groups' describes {size:.3g} cells; cell ids must fit in int64 (at most {MAX_CELLS:.3g})")
        return cls(str(raw.get("name", Path(source).stem)), axes, fixed, str(raw.get("description", "")))

    def restrict(self, **allowed: Iterable) -> "Space":
        """A sub-space allowing only the given values per axis; ids stay those of the full space."""
        axes = []
        for axis in self.axes:
            if axis.name in allowed:
                keep = tuple(axis.coerce(v) for v in allowed[axis.name])
                keep = tuple(v for v in axis.choices if v in keep)  # canonical order, intersected
                if not keep:
                    raise SpaceError(f"restricting {axis.name} leaves no values")
                axis = Axis(axis.name, axis.group, axis.values, axis.help, keep)
            axes.append(axis)
        unknown = set(allowed) - set(self._by_name)
        if unknown:
            raise SpaceError(f"cannot restrict unknown axes {sorted(unknown)}; axes: {self.axis_names}")
        return Space(self.name, axes, self.fixed, self.description)

    # ---- queries ------------------------------------------------------------------------
    @property
    def axis_names(self) -> list[str]:
        return [a.name for a in self.axes]

    def axis(self, name: str) -> Axis:
        return self._by_name[name]

    def group_axes(self, group: str) -> list[Axis]:
        return [a for a in self.axes if a.group == group]

    @property
    def size(self) -> int:
        """Number of cells allowed (the full size unless restricted)."""
        return math.prod(len(a.choices) for a in self.axes)

    def cell_id(self, values: Mapping[str, Any]) -> int:
        return sum(self._weights[i] * axis.values.index(values[axis.name]) for i, axis in enumerate(self.axes))

    def cell(self, cell_id: int) -> Cell:
        """The cell with a canonical id. Raises InvalidCell if out of range or outside a restriction."""
        if not 0 <= int(cell_id) < self.full_size:
            raise InvalidCell(f"cell id {cell_id} is outside 0..{self.full_size - 1}")
        rest, values = int(cell_id), {}
        for weight, axis in zip(self._weights, self.axes):
            index, rest = divmod(rest, weight)
            values[axis.name] = axis.values[index]
        return self.validate(values)

    def validate(self, proposal: Mapping[str, Any]) -> Cell:
        """Turn untrusted input into a Cell, or raise InvalidCell with a one-line reason."""
        if not isinstance(proposal, Mapping):
            raise InvalidCell(f"a proposal must be an object with keys {self.axis_names}, got {type(proposal).__name__}")
        missing = [n for n in self.axis_names if n not in proposal]
        if missing:
            raise InvalidCell(f"missing axes {missing}; a cell sets every axis of {self.axis_names}")
        extra = [k for k in proposal if k not in self._by_name]
        if extra:
            raise InvalidCell(f"unknown axes {extra}; the axes are {self.axis_names}")
        values = {axis.name: axis.coerce(proposal[axis.name]) for axis in self.axes}
        return Cell(self.cell_id(values), values)

    def explain(self, proposal: Any) -> str | None:
        """None if the proposal is a valid cell, else the one-line reason."""
        try:
            self.validate(proposal)
            return None
        except InvalidCell as exc:
            return exc.reason

    def contains(self, cell: Cell) -> bool:
        return all(cell[a.name] in a.choices for a in self.axes)

    # ---- sampling and neighbourhoods ---------------------------------------------------------
    def sample(self, rng: random.Random, n: int = 1) -> list[Cell]:
        """n cells drawn uniformly (with replacement) from the allowed values."""
        return [self.validate({a.name: rng.choice(a.choices) for a in self.axes}) for _ in range(n)]

    def neighbours(self, cell: Cell, axes: Iterable[str] | None = None) -> list[Cell]:
        """Every allowed cell that differs from ``cell`` in exactly one axis (optionally only given axes)."""
        names = set(axes) if axes is not None else set(self.axis_names)
        out = []
        for axis in self.axes:
            if axis.name not in names:
                continue
            for value in axis.choices:
                if value != cell[axis.name]:
                    out.append(self.validate({**cell.values, axis.name: value}))
        return out

    def describe(self) -> str:
        """A plain-text description of the axes, for prompts and `crashsearch space`."""
        lines = [f"space {self.name}: {self.size:,} cells" + (f" (of {self.full_size:,})" if self.size != self.full_size else "")]
        for group in GROUPS:
            for axis in self.group_axes(group):
                lines.append(f"  [{group}] {axis.name}: {_fmt(axis.choices)}" + (f"  -- {axis.help}" if axis.help else ""))
        if self.fixed:
            lines.append("  fixed: " + ", ".join(f"{k}={v}" for k, v in self.fixed.items()))
        return "\n".join(lines)
