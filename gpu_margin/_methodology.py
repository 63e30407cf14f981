"""Methodology files (TOML) and presets: parsing and validation.

A methodology is a TOML file or the name of a preset shipped in
``gpu_margin/presets``. Every key is checked: an unknown key, a wrong type or an
impossible value is a :class:`MethodologyError` naming the file and the key —
a typo must never weaken a requirement.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ._exceptions import MethodologyError

PRESETS = ("finra", "house", "span16", "scenarios")


@dataclass(frozen=True)
class GroupParams:
    """Grid parameters of one product group (top-level keys with the group's overrides)."""

    down: float
    up: float
    points_per_side: int = 5
    offset: float = 0.0
    min_charge_per_contract: float = 0.375
    vol_shock_mode: str = "relative"
    vol_shocks: tuple[float, ...] = (0.0,)
    contingency_rate: float = 0.0
    concentration_threshold: float = 0.0
    concentration_down: float = 0.25
    concentration_up: float = 0.25
    extreme_multiple: float = 0.0
    extreme_coverage: float = 0.35
    vol_scaled_sigmas: float = 0.0
    vol_scaled_horizon_days: float = 2.0


@dataclass(frozen=True)
class Methodology:
    """A validated methodology: ``kind`` ``grid`` or ``scenarios`` and its parameters."""

    kind: str
    name: str
    defaults: GroupParams
    product_groups: dict[str, GroupParams] = field(default_factory=dict)
    min_equity: float = 0.0

    def group(self, name: str) -> GroupParams:
        try:
            return self.product_groups[name]
        except KeyError:
            raise MethodologyError(
                f"{self.name}: product group {name!r} (from the market file) has no "
                f"[product_groups.{name}] section; add one with down and up"
            ) from None

    def as_dict(self) -> dict[str, Any]:
        """Plain parameters, for the manifest."""
        from dataclasses import asdict  # noqa: PLC0415

        return {
            "kind": self.kind,
            "name": self.name,
            "min_equity": self.min_equity,
            "defaults": asdict(self.defaults),  # what a group not listed, and a scenarios methodology, use
            "product_groups": {k: asdict(v) for k, v in self.product_groups.items()},
        }


# top-level key -> (type check, description of the valid values)
_NUM = (int, float)
_TOP: dict[str, tuple[Any, str]] = {
    "min_charge_per_contract": (_NUM, "a number >= 0"),
    "vol_shock_mode": (str, "'relative' or 'absolute'"),
    "vol_shocks": (list, "a non-empty list of numbers"),
    "contingency_rate": (_NUM, "a number in [0, 1]"),
    "concentration_threshold": (_NUM, "a number >= 0 (0 = off)"),
    "concentration_down": (_NUM, "a number in (0, 1)"),
    "concentration_up": (_NUM, "a number > 0"),
    "extreme_multiple": (_NUM, "a number >= 0 (0 = off)"),
    "extreme_coverage": (_NUM, "a number in [0, 1]"),
    "vol_scaled_sigmas": (_NUM, "a number >= 0 (0 = fixed ranges)"),
    "vol_scaled_horizon_days": (_NUM, "a number > 0"),
}
_GROUP_ONLY: dict[str, tuple[Any, str]] = {
    "down": (_NUM, "a number in (0, 1)"),
    "up": (_NUM, "a number > 0"),
    "points_per_side": (int, "an integer >= 1"),
    "offset": (_NUM, "a number in [0, 1]"),
}
_FILE_ONLY = {"kind": (str, "'grid' or 'scenarios'"), "min_equity": (_NUM, "a number >= 0"),
              "product_groups": (dict, "a table of product groups")}


def load_methodology(spec: str | Path) -> Methodology:
    """A preset name (``finra``, ``house``, ``span16``) or a path to a methodology TOML file."""
    text_name = str(spec)
    if text_name in PRESETS:
        text = resources.files("gpu_margin.presets").joinpath(f"{text_name}.toml").read_text(encoding="utf-8")
        return parse_methodology(text, name=f"preset {text_name!r}")
    path = Path(spec)
    if not path.exists():
        raise MethodologyError(
            f"methodology {text_name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file; "
            "pass a preset name or a path to a TOML file"
        )
    try:
        text = path.read_text(encoding="utf-8")  # TOML is UTF-8 whatever the locale
    except OSError as exc:
        raise MethodologyError(f"{path}: cannot be read ({exc.strerror}); check the path and permissions") from None
    except UnicodeDecodeError as exc:
        raise MethodologyError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                               "save it as UTF-8, as TOML requires") from None
    return parse_methodology(text, name=str(path))


def parse_methodology(text: str, name: str = "methodology") -> Methodology:
    """Parse and validate methodology TOML text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MethodologyError(f"{name}: not valid TOML ({exc}); fix the syntax") from None
    for key in doc:
        if key not in _TOP and key not in _FILE_ONLY:
            raise MethodologyError(f"{name}: unknown key {key!r}; valid keys are {_valid_keys()}")
    kind = doc.get("kind", "grid")
    if kind not in ("grid", "scenarios"):
        raise MethodologyError(f"{name}: key 'kind' must be 'grid' or 'scenarios' (got {kind!r})")
    min_equity = _check(name, "min_equity", doc.get("min_equity", 0.0), *_FILE_ONLY["min_equity"])
    top = {k: _check(name, k, v, *_TOP[k]) for k, v in doc.items() if k in _TOP}
    groups_doc = doc.get("product_groups", {})
    if not isinstance(groups_doc, dict):
        raise MethodologyError(f"{name}: 'product_groups' must be a table of [product_groups.NAME] sections")
    if kind == "grid" and not groups_doc:
        raise MethodologyError(f"{name}: a grid methodology needs at least one [product_groups.NAME] section")
    base = {f.name: f.default for f in fields(GroupParams) if f.name not in ("down", "up")}
    base.update(top)
    defaults = GroupParams(down=0.15, up=0.15, **{k: v for k, v in base.items()})
    groups: dict[str, GroupParams] = {}
    for gname, gdoc in groups_doc.items():
        where = f"product_groups.{gname}"
        if not isinstance(gdoc, dict):
            raise MethodologyError(f"{name}: '{where}' must be a table with down and up")
        for key in gdoc:
            if key not in _GROUP_ONLY and key not in _TOP:
                raise MethodologyError(
                    f"{name}: unknown key '{where}.{key}'; a group takes down, up, points_per_side, offset "
                    f"or an override of a top-level key ({', '.join(_TOP)})"
                )
        for req in ("down", "up"):
            if req not in gdoc:
                raise MethodologyError(f"{name}: '{where}' is missing '{req}'; add it (a fraction, e.g. 0.15)")
        params = dict(base)
        params.update({k: _check(name, f"{where}.{k}", v, *(_GROUP_ONLY.get(k) or _TOP[k])) for k, v in gdoc.items()})
        groups[gname] = GroupParams(**params)
    return Methodology(kind=kind, name=name, defaults=defaults, product_groups=groups, min_equity=min_equity)


def _valid_keys() -> str:
    return ", ".join(["kind", "min_equity", "product_groups", *_TOP])


def _check(name: str, key: str, value: Any, typ: Any, what: str) -> Any:
    """Type and range check of one key; returns the normalised value."""
    leaf = key.rsplit(".", 1)[-1]
    bad = MethodologyError(f"{name}: key '{key}' must be {what} (got {value!r})")
    if isinstance(value, bool) or not isinstance(value, typ):
        raise bad
    if leaf == "vol_shocks":
        if not value or any(isinstance(v, bool) or not isinstance(v, _NUM) for v in value):
            raise bad
        if len(set(value)) != len(value):
            raise MethodologyError(f"{name}: key '{key}' lists a shock twice ({value!r}); list each once")
        return tuple(float(v) for v in value)
    if leaf == "vol_shock_mode":
        if value not in ("relative", "absolute"):
            raise bad
        return value
    if leaf == "points_per_side":
        if value < 1:
            raise bad
        return int(value)
    v = float(value)
    ok = {
        "down": 0.0 < v < 1.0,
        "concentration_down": 0.0 < v < 1.0,
        "up": v > 0.0,
        "concentration_up": v > 0.0,
        "offset": 0.0 <= v <= 1.0,
        "contingency_rate": 0.0 <= v <= 1.0,
        "extreme_coverage": 0.0 <= v <= 1.0,
        "vol_scaled_horizon_days": v > 0.0,
    }.get(leaf, v >= 0.0)
    if not ok or v != v:
        raise bad
    return v


def with_overrides(m: Methodology, **params: Any) -> Methodology:
    """A copy with top-level parameters replaced in every group (for what-if runs and tests)."""
    groups = {k: replace(g, **params) for k, g in m.product_groups.items()}
    return replace(m, defaults=replace(m.defaults, **params), product_groups=groups)
