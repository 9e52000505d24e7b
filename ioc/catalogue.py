"""Sector catalogue and province profiles: YAML files validated on load.

`ioc/profiles/catalogue.yaml` defines every known sector and its metrics. A profile file
(`ioc/profiles/<name>.yaml`, or any path given in IOC_PROFILE) picks sectors from the catalogue,
may override or add metrics, thresholds and headline KPIs, and may define districts and sectors
of its own.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ioc.errors import ProfileError
from ioc.vocabulary import Direction, Severity, breaches

CATALOGUE_FILE = "catalogue.yaml"
_ID_RE = r"^[a-z][a-z0-9_]{0,62}$"
_PROFILE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
Ident = Annotated[str, Field(pattern=_ID_RE)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(_Strict):
    """A default alert threshold of a metric."""

    severity: Severity
    direction: Direction
    value: float
    inclusive: bool = False
    for_s: int = Field(default=0, ge=0, description="how long the condition must hold")
    clear_at: float | None = Field(default=None, description="hysteresis: value that clears it")

    @model_validator(mode="after")
    def _clear_on_the_normal_side(self) -> Self:
        if self.clear_at is None:
            return self
        normal = (
            self.clear_at < self.value
            if self.direction is Direction.ABOVE
            else (self.clear_at > self.value)
        )
        if not normal:
            raise ValueError(
                f"clear_at {self.clear_at} must be on the normal side of {self.value} "
                f"for direction {self.direction.value}"
            )
        return self

    def breached(self, value: float) -> bool:
        """Whether one value is on the abnormal side of this threshold."""
        return breaches(value, self.direction, self.value, self.inclusive)


class Band(_Strict):
    """A display band of a metric's scale (e.g. VN_AQI 'good' up to 50)."""

    upto: float | None = Field(description="upper bound, inclusive; null for the last band")
    label_vi: str
    label_en: str
    colour: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")


class Metric(_Strict):
    """A measured quantity of a sector."""

    id: Ident
    unit: str = Field(min_length=1)
    name_vi: str = Field(min_length=1)
    name_en: str = Field(min_length=1)
    interval_s: int = Field(gt=0, description="expected reporting interval of a source")
    min: float
    max: float
    thresholds: tuple[Threshold, ...] = ()
    bands: tuple[Band, ...] = ()

    @model_validator(mode="after")
    def _check_range(self) -> Self:
        if self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        for t in self.thresholds:
            if not self.min <= t.value <= self.max:
                raise ValueError(f"threshold {t.value} is outside [{self.min}, {self.max}]")
        uppers = [b.upto for b in self.bands]
        if uppers and (None in uppers[:-1] or uppers != sorted(uppers, key=_band_key)):
            raise ValueError("bands must be in ascending order, only the last one open")
        return self

    def contains(self, value: float) -> bool:
        """Whether a value is physically valid for this metric."""
        return self.min <= value <= self.max


def _band_key(upto: float | None) -> float:
    return float("inf") if upto is None else upto


class Sector(_Strict):
    """A sector of the operations center, resolved against the catalogue."""

    id: Ident
    name_vi: str = Field(min_length=1)
    name_en: str = Field(min_length=1)
    order: int
    colour: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")
    metrics: tuple[Metric, ...] = Field(min_length=1)
    kpis: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check_ids(self) -> Self:
        ids = [m.id for m in self.metrics]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate metric ids: {', '.join(dupes)}")
        unknown = [k for k in self.kpis if k not in ids]
        if unknown:
            raise ValueError(f"kpis name unknown metrics: {', '.join(unknown)}")
        return self

    def metric(self, metric_id: str) -> Metric | None:
        """The metric with this id, if the sector has it."""
        return next((m for m in self.metrics if m.id == metric_id), None)


class District(_Strict):
    """An administrative area used to filter sources and panels; its centre (approximate, for
    maps: where its name is drawn and, in the demo, around which its sources are placed)."""

    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
    name_vi: str = Field(min_length=1)
    name_en: str = Field(min_length=1)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError(f"district {self.id}: latitude and longitude go together")
        return self


class Profile(_Strict):
    """A province profile: the sectors and districts one operations center watches."""

    name: str
    title_vi: str = Field(min_length=1)
    title_en: str = Field(min_length=1)
    timezone: str = "Asia/Ho_Chi_Minh"
    sectors: tuple[Sector, ...] = Field(min_length=1)
    districts: tuple[District, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _unique(self) -> Self:
        for kind, ids in (
            ("sector", [s.id for s in self.sectors]),
            ("district", [d.id for d in self.districts]),
        ):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} ids: {', '.join(dupes)}")
        return self

    def sector(self, sector_id: str) -> Sector | None:
        """The sector with this id, if the profile has it."""
        return next((s for s in self.sectors if s.id == sector_id), None)

    def to_json_dict(self) -> dict[str, Any]:
        """The profile as plain JSON-ready values (what `ioc profiles show --json` prints)."""
        return self.model_dump(mode="json")


# --- file formats -------------------------------------------------------------------------


class _SectorEntry(_Strict):
    """A sector as written in a profile file: a catalogue reference with overrides, or new."""

    id: Ident
    name_vi: str | None = None
    name_en: str | None = None
    order: int | None = None
    colour: str | None = None
    only_metrics: tuple[str, ...] | None = None
    metrics: tuple[dict[str, Any], ...] = ()
    kpis: tuple[str, ...] | None = None


class _ProfileFile(_Strict):
    name: str | None = None
    title_vi: str
    title_en: str
    timezone: str = "Asia/Ho_Chi_Minh"
    sectors: tuple[_SectorEntry, ...] = Field(min_length=1)
    districts: tuple[District, ...] = ()


class _CatalogueFile(_Strict):
    sectors: tuple[Sector, ...] = Field(min_length=1)


def _read_yaml(path: Path | str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None


def _format_validation(path: Path | str, exc: ValidationError, prefix: str = "") -> ProfileError:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after",))
        where = f"{prefix}{'.' if prefix and loc else ''}{loc}" or "(top level)"
        lines.append(f"{path}: {where}: {err['msg']}")
    return ProfileError("\n".join(lines))


def _bundled(name: str) -> tuple[str, str]:
    ref = resources.files("ioc") / "profiles" / name
    if not ref.is_file():
        raise ProfileError(f"no bundled file {name!r} in ioc/profiles")
    return f"ioc/profiles/{name}", ref.read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def load_catalogue() -> dict[str, Sector]:
    """The bundled sector catalogue, by sector id."""
    where, text = _bundled(CATALOGUE_FILE)
    data = _read_yaml(where, text)
    try:
        parsed = _CatalogueFile.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(where, exc) from None
    ids = [s.id for s in parsed.sectors]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ProfileError(f"{where}: duplicate sector ids: {', '.join(dupes)}")
    return {s.id: s for s in parsed.sectors}


def bundled_profile_names() -> list[str]:
    """Names of the profiles shipped with ioc."""
    folder = resources.files("ioc") / "profiles"
    return sorted(
        p.name.removesuffix(".yaml")
        for p in folder.iterdir()
        if p.name.endswith(".yaml") and p.name != CATALOGUE_FILE
    )


def _merge_metric(where: str, path: str, base: Metric | None, raw: dict[str, Any]) -> Metric:
    merged = {**base.model_dump(), **raw} if base is not None else raw
    try:
        return Metric.model_validate(merged)
    except ValidationError as exc:
        raise _format_validation(where, exc, path) from None


def _resolve_sector(
    where: str, index: int, entry: _SectorEntry, catalogue: dict[str, Sector]
) -> Sector:
    path = f"sectors.{index}"
    base = catalogue.get(entry.id)
    metrics: list[Metric] = list(base.metrics) if base is not None else []
    if entry.only_metrics is not None:
        known = {m.id for m in metrics}
        missing = [m for m in entry.only_metrics if m not in known]
        if missing:
            raise ProfileError(
                f"{where}: {path}.only_metrics: not in the catalogue sector {entry.id!r}: "
                f"{', '.join(missing)}"
            )
        metrics = [m for m in metrics if m.id in entry.only_metrics]
    for j, raw in enumerate(entry.metrics):
        metric_id = raw.get("id")
        at = next((k for k, m in enumerate(metrics) if m.id == metric_id), None)
        merged = _merge_metric(
            where, f"{path}.metrics.{j}", metrics[at] if at is not None else None, raw
        )
        if at is None:
            metrics.append(merged)
        else:
            metrics[at] = merged
    fields: dict[str, Any] = base.model_dump(exclude={"metrics", "kpis"}) if base else {}
    overrides = entry.model_dump(
        include={"name_vi", "name_en", "order", "colour"}, exclude_none=True
    )
    fields.update(overrides)
    fields["id"] = entry.id
    # A profile lists its sectors in the order its screen shows them.
    fields["order"] = entry.order if entry.order is not None else (index + 1) * 10
    if base is None and not {"name_vi", "name_en", "colour"} <= fields.keys():
        raise ProfileError(
            f"{where}: {path}: sector {entry.id!r} is not in the catalogue, so it needs "
            "name_vi, name_en, colour and metrics"
        )
    kpis = entry.kpis if entry.kpis is not None else (base.kpis if base is not None else ())
    try:
        return Sector.model_validate({**fields, "metrics": metrics, "kpis": kpis})
    except ValidationError as exc:
        raise _format_validation(where, exc, path) from None


def parse_profile(where: str, text: str, *, default_name: str) -> Profile:
    """Validate one profile file's text against the catalogue."""
    data = _read_yaml(where, text)
    try:
        parsed = _ProfileFile.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(where, exc) from None
    catalogue = load_catalogue()
    sectors = [_resolve_sector(where, i, e, catalogue) for i, e in enumerate(parsed.sectors)]
    try:
        return Profile.model_validate(
            {
                "name": parsed.name or default_name,
                "title_vi": parsed.title_vi,
                "title_en": parsed.title_en,
                "timezone": parsed.timezone,
                "sectors": sectors,
                "districts": parsed.districts,
            }
        )
    except ValidationError as exc:
        raise _format_validation(where, exc) from None


def load_profile(name_or_path: str) -> Profile:
    """A bundled profile by name, or a profile file by path (anything with '/' or '.yaml')."""
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"{path}: cannot read profile: {exc.strerror}") from None
        return parse_profile(str(path), text, default_name=path.stem)
    if not _PROFILE_NAME_RE.match(name_or_path) or name_or_path not in bundled_profile_names():
        known = ", ".join(bundled_profile_names())
        raise ProfileError(f"unknown profile {name_or_path!r}; bundled profiles: {known}")
    where, text = _bundled(f"{name_or_path}.yaml")
    return parse_profile(where, text, default_name=name_or_path)
