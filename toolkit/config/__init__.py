"""Layered configuration: versioned defaults, overlays, patches, one typed model, provenance.

Layers, lowest first:

1. ``configs/defaults.yaml`` (every key, commented)
2. ``configs/markets/<COUNTRY>.yaml``
3. ``configs/periods/<YYYY-MM>.yaml`` (optional)
4. ``configs/categories/<name>.yaml`` (optional, only when a category is chosen)
5. each ``--config`` URL, in order (local path or any fsspec URL)
6. each ``--patch key.path=value``, in order

The run identity (``country``, ``period``, ``category``) comes from ``env.yaml``, then
``--config`` files and patches; it picks which overlays of layers 2-4 apply, so overlays
themselves may not change it. Mappings merge deeply; lists replace. Every leaf value
remembers the layer that set it.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import ipaddress
import json
import re
import string
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from toolkit import project
from toolkit.data import storage

__all__ = [
    "ConfigError",
    "IDENTITY_KEYS",
    "OPERATOR_KEYS",
    "ResolvedConfig",
    "ToolkitConfig",
    "known_markets",
    "load_yaml_text",
    "operator_key",
    "parse_patch",
    "resolve",
]

IDENTITY_KEYS = ("country", "period", "category")
# Settings that reach outside the run (where recommendations go, which endpoints and
# addresses are allowed, where and how steps execute: executor, scheduler, kernels) and
# everything under them. They belong to whoever operates the toolkit: configs/, the
# environment, or an operator's own `toolkit run --patch`; the app's launch path refuses them.
# Sources too: they name what a run reads, anywhere the run's credentials reach.
OPERATOR_KEYS = ("output", "execution", "load_transform.sources")
MAX_CONFIG_BYTES = 1_000_000  # a config is a few KB; anything bigger is a mistake or an attack

IDENTITY_PATTERNS = {
    "country": (r"[A-Z]{2}", "must be a two-letter market code such as US or NO"),
    "period": (r"[0-9]{4}-(0[1-9]|1[0-2])", "must be a month as YYYY-MM"),
    "category": (r"[a-z][a-z0-9_]*", "must be a lowercase category name"),
}
_KEY_PATH = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")


# ---------------------------------------------------------------------------
# The model. Descriptions are user-facing: the app builds its form from them.
# ---------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SOURCE_PLACEHOLDERS = ("root", "country", "period")


class SourceConfig(_Section):
    """Where one raw table comes from, and how to read it."""

    url: str = Field(
        min_length=1,
        max_length=2000,
        description="File URL or glob (any fsspec URL); {root}, {country} and {period} "
        "are replaced by the storage root, the market and the period.",
    )
    format: Literal["csv", "parquet"] | None = Field(
        None, description="csv or parquet; none guesses it from the URL's suffix."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="The file's columns to read, each with the contract's name for it; "
        "empty reads the file as it is.",
    )
    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field separator.")
    decimal: str = Field(".", min_length=1, max_length=1, description="CSV decimal mark.")
    date_format: str | None = Field(
        None, max_length=100, description="CSV date format such as %d.%m.%Y; none reads ISO."
    )
    encoding: str = Field("utf-8", max_length=40, description="CSV text encoding.")

    @field_validator("url")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"{exc}; write a literal brace as {{{{ or }}}}") from None
        unknown = sorted(set(names) - set(SOURCE_PLACEHOLDERS))
        if unknown:
            known = ", ".join(f"{{{name}}}" for name in SOURCE_PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; known: {known}")
        return value


class Sources(_Section):
    sales: SourceConfig = Field(
        default_factory=lambda: SourceConfig(url="{root}/raw/market={country}/sales.parquet"),
        description="Daily sales (contract RawSales).",
    )
    catalog: SourceConfig = Field(
        default_factory=lambda: SourceConfig(url="{root}/raw/market={country}/catalog.parquet"),
        description="Product catalog (contract Catalog).",
    )


class LoadTransformConfig(_Section):
    history_weeks: int = Field(
        156, ge=60, le=520, description="Weeks of sales history before the priced month."
    )
    max_gap_weeks: int = Field(
        8,
        ge=0,
        le=26,
        description="Most weeks between the last complete week of sales and the priced "
        "month; they are forecast, not learnt from.",
    )
    min_weeks_with_sales: int = Field(
        26, ge=1, le=520, description="Products sold in fewer weeks than this are dropped."
    )
    sources: Sources = Field(default_factory=Sources, description="Where the raw tables come from.")


class UnderperformersConfig(_Section):
    recent_weeks: int = Field(
        8, ge=2, le=26, description="Recent window compared with the product's own past."
    )
    baseline_weeks: int = Field(
        26, ge=4, le=104, description="Trailing window before the recent one used as baseline."
    )
    decline_threshold: float = Field(
        0.85,
        gt=0,
        le=1,
        description="Flag a product when recent sales, adjusted for season, fall below this "
        "share of its own baseline.",
    )
    peer_threshold: float = Field(
        1.0,
        gt=0,
        le=2,
        description="Flag only when the product also trails its category peers' median "
        "change by this ratio or worse.",
    )
    max_products: int = Field(
        60, ge=1, le=5000, description="At most this many products go on to forecasting."
    )


class ForecastConfig(_Section):
    horizon: int = Field(
        12,
        ge=1,
        le=52,
        description="Weeks to forecast ahead at least; the forecast always reaches the end "
        "of the priced month.",
    )
    backtest_weeks: int = Field(
        12, ge=4, le=52, description="Held-out weeks used to score the model against a baseline."
    )
    season_length: int = Field(52, ge=2, le=52, description="Weeks in one seasonal cycle.")


class Weights(_Section):
    revenue: float = Field(
        0.4, ge=0, le=1, description="Weight of revenue change in the objective."
    )
    margin: float = Field(0.4, ge=0, le=1, description="Weight of margin change in the objective.")
    volume: float = Field(0.2, ge=0, le=1, description="Weight of unit volume change.")

    @model_validator(mode="after")
    def _not_all_zero(self) -> Weights:
        if self.revenue + self.margin + self.volume <= 0:
            raise ValueError("at least one of revenue, margin, volume must be above 0")
        return self


class Constraints(_Section):
    price_levels: list[float] = Field(
        [-0.3, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1],
        min_length=1,
        max_length=25,
        description="Allowed price changes as fractions of the current price (0 = no change).",
    )
    max_discount: float = Field(
        0.25, ge=0, lt=1, description="Largest allowed price cut, as a fraction."
    )
    min_margin: float = Field(
        0.15, ge=0, lt=1, description="Minimum gross margin share of a changed price."
    )
    markdown_budget: float = Field(
        50_000.0,
        ge=0,
        le=1e10,
        description="Most revenue given up to discounts in the priced month, in market currency.",
    )
    max_changes: int = Field(
        25, ge=0, le=10_000, description="Most products whose price may change."
    )

    @model_validator(mode="after")
    def _levels_in_range(self) -> Constraints:
        bad = [level for level in self.price_levels if not -1 < level <= 1]
        if bad:
            raise ValueError(f"price_levels must lie in (-1, 1], got {bad}")
        return self


class OptimizeConfig(_Section):
    weights: Weights = Field(default_factory=Weights, description="Objective weights.")
    constraints: Constraints = Field(
        default_factory=Constraints, description="Business constraints."
    )


EndpointPattern = Annotated[str, Field(pattern=r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")]


class OutputConfig(_Section):
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        description="HTTP(S) URL that receives the recommendations as JSON; none to skip. "
        "It must match allowed_endpoints.",
    )
    allowed_endpoints: list[EndpointPattern] = Field(
        default_factory=list,
        max_length=100,
        description="URLs the endpoint may be, as scheme://host[:port][/path]: the host "
        "exactly (or *.example.com for its subdomains), the port exactly (the scheme's "
        "default when absent), the path as a prefix. Empty: no delivery.",
    )
    allow_addresses: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Networks (CIDR, e.g. 127.0.0.0/8) delivery may reach although they are "
        "loopback, link-local or cloud metadata addresses, which are refused otherwise.",
    )
    retries: int = Field(3, ge=0, le=10, description="Delivery attempts after the first.")
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="Timeout per delivery attempt.")

    @field_validator("allow_addresses")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not a network such as 127.0.0.0/8 or ::1") from None
        return value


class ExecutionConfig(_Section):
    step_timeout_seconds: int = Field(
        1800, ge=10, le=86_400, description="A step running longer than this fails."
    )
    step_memory_mb: int = Field(
        0,
        ge=0,
        le=1_048_576,
        description="A step whose kernel's resident memory (the libraries it loaded "
        "included) goes over this many MB fails; 0: no limit.",
    )
    executor: Literal["serial", "dask"] = Field(
        "serial", description="Where steps run: this process, or a Dask cluster."
    )
    workers: int = Field(2, ge=1, le=256, description="Workers of a local Dask cluster.")
    scheduler: str | None = Field(
        None,
        pattern=r"^(tcp|tls|inproc|ws|wss)://[^\s]+$",
        description="Address of an existing Dask scheduler; none starts a local cluster.",
    )
    retries: int = Field(
        2, ge=0, le=10, description="Retries of a step whose worker failed or vanished."
    )
    kernel: Literal["reuse", "fresh"] = Field(
        "reuse",
        description="reuse: one Jupyter kernel per run, reset before each step (no "
        "re-imports); fresh: a new kernel for every step.",
    )


class ToolkitConfig(_Section):
    country: str = Field(
        "US", pattern=r"^[A-Z]{2}$", description="Market to run, a two-letter code."
    )
    period: str = Field(
        "2026-11",
        pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$",
        description="Month whose prices the run sets (YYYY-MM); history ends before it.",
    )
    category: str | None = Field(
        None, pattern=r"^[a-z][a-z0-9_]*$", description="Limit the run to one category."
    )
    load_transform: LoadTransformConfig = Field(default_factory=LoadTransformConfig)
    underperformers: UnderperformersConfig = Field(default_factory=UnderperformersConfig)
    forecast: ForecastConfig = Field(default_factory=ForecastConfig)
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@dataclass
class Problem:
    source: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        return f"{where}: {self.message}"


class ConfigError(ValueError):
    """Config could not be loaded; each problem names its source, key path and issue."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration:\n{lines}")


# ---------------------------------------------------------------------------
# Safe YAML: no tags, no aliases, codes and dates stay strings
# ---------------------------------------------------------------------------


MAX_NESTING = 32  # configs nest three or four levels; deeper is a mistake or an attack


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars (`NO` and `2024-01` stay strings, `012` is 12), no
    aliases, no duplicate keys, and at most ``MAX_NESTING`` levels."""

    depth = 0

    def compose_node(self, parent, index):
        # Aliases make "billion laughs" bombs possible; configs never need them.
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in configs", event.start_mark
            )
        if self.depth >= MAX_NESTING:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_NESTING} levels",
                self.peek_event().start_mark,
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        # Last-wins would let a second `weights:` silently replace the first.
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):  # SafeLoader names an unhashable key itself
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", r"^[-+]?[0-9]+$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
]:
    _StrictLoader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


def _construct_decimal_int(loader, node):
    # YAML 1.1 reads 012 as octal 10; configs mean twelve.
    return int(loader.construct_scalar(node).replace("_", ""))


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_decimal_int)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML safely; errors name the source, line and column."""
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise ConfigError([Problem(source, "", f"file is larger than {MAX_CONFIG_BYTES} bytes")])
    # A copy: callers may change what they get, and the parsed text is kept.
    return copy.deepcopy(_parsed_yaml(text, source))


@functools.lru_cache(maxsize=256)
def _parsed_yaml(text: str, source: str) -> Any:
    # A run resolves its config once per step (dotted_path params) from the same few
    # files; the pure-Python loader parsing them again each time was a tenth of a no-op run.
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        reason = exc.problem or exc.context or "syntax error"
        raise ConfigError([Problem(source, "", f"YAML error at {where}: {reason}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(source, "", f"YAML error: {exc}")]) from None


def _read_layer(url: str) -> dict:
    try:
        with storage.open_url(url, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([Problem(url, "", "file not found")]) from None
    except OSError as exc:
        raise ConfigError([Problem(url, "", f"cannot read: {exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem(url, "", "file is not UTF-8 text")]) from None
    data = load_yaml_text(text, url)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem(url, "", f"expected a mapping of keys, got {type(data).__name__}")]
        )
    return data


def operator_key(key_path: str) -> str | None:
    """The entry of ``OPERATOR_KEYS`` that ``key_path`` is or lies under, if any."""
    return next(
        (key for key in OPERATOR_KEYS if key_path == key or key_path.startswith(f"{key}.")),
        None,
    )


# ---------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------


def parse_patch(patch: str) -> dict:
    """Turn ``a.b=value`` into ``{"a": {"b": value}}``; the value is a YAML scalar or list."""
    # A patch can be kilobytes long (a deep list): the error shows its start.
    source = f"--patch {patch[:60] + '...' if len(patch) > 60 else patch!r}"
    key, sep, raw_value = patch.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError([Problem(source, "", "expected key.path=value")])
    if not _KEY_PATH.match(key):
        raise ConfigError([Problem(source, key, "key must be dot-separated lowercase identifiers")])
    value = load_yaml_text(raw_value, source) if raw_value.strip() else None
    if isinstance(value, dict):
        raise ConfigError([Problem(source, key, "value must be a scalar or a list")])
    nested: dict = {}
    node = nested
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return nested


# ---------------------------------------------------------------------------
# Merge with provenance
# ---------------------------------------------------------------------------


def _merge(base: dict, overlay: Mapping, origins: dict, source: str, prefix: str = "") -> None:
    for key, value in overlay.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, origins, source, f"{path}.")
        else:
            # A mapping or list replaces whatever was there; forget origins below it.
            for stale in [k for k in origins if k.startswith(f"{path}.")]:
                del origins[stale]
            base[key] = _copy(value)
            _record_origins(value, path, origins, source)


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return list(value)
    return value


def _record_origins(value: Any, path: str, origins: dict, source: str) -> None:
    if isinstance(value, Mapping) and value:
        for key, child in value.items():
            _record_origins(child, f"{path}.{key}", origins, source)
    else:
        origins[path] = source


# ---------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------


@dataclass
class Layer:
    source: str
    data: dict


@dataclass
class ResolvedConfig:
    """The validated config, the layers it came from and each leaf's origin."""

    config: ToolkitConfig
    origins: dict[str, str]
    layers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.config.model_dump(mode="json")

    def section(self, name: str) -> dict:
        return self.as_dict()[name]

    def digest(self, section: str | None = None) -> str:
        data = self.as_dict() if section is None else self.section(section)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def leaves(self) -> list[tuple[str, Any, str]]:
        """(key path, value, origin) for every leaf, in model order."""
        out: list[tuple[str, Any, str]] = []

        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict) and node:
                for key, child in node.items():
                    walk(child, f"{path}.{key}" if path else key)
            else:
                out.append((path, node, self.origin(path)))

        walk(self.as_dict(), "")
        return out

    def origin(self, key_path: str) -> str:
        return self.origins.get(key_path, "model default")


def _display(path: Path, project_dir: Path) -> str:
    """Project files are shown relative to the repo, so origins read the same everywhere."""
    try:
        return str(path.relative_to(project_dir))
    except ValueError:
        return str(path)


def _file_layer(path: Path, project_dir: Path) -> Layer:
    try:
        return Layer(_display(path, project_dir), _read_layer(str(path)))
    except ConfigError as exc:  # name the file as the user sees it
        for problem in exc.problems:
            problem.source = _display(Path(problem.source), project_dir)
        raise


def known_markets(project_dir: Path | None = None) -> list[str]:
    project_dir = project.resolve(project_dir)
    return sorted(p.stem for p in (project_dir / "configs" / "markets").glob("*.yaml"))


def _env_identity(project_dir: Path) -> dict:
    env_file = project_dir / "env.yaml"
    if not env_file.exists():
        return {}
    data = load_yaml_text(env_file.read_text(), str(env_file)) or {}
    return {k: data[k] for k in IDENTITY_KEYS if k in data}


def _normalise_identity(value: Any) -> Any:
    # Ploomber's --env--country NO may arrive as a string "NO"; a YAML 1.1 reader
    # elsewhere may have turned it into False. Codes and months are always text.
    if value is False:
        return "NO"
    if value in (None, "", "None", "null", "all"):
        return None
    return str(value)


def _validate_keys(layer: Layer, model: type[BaseModel] = ToolkitConfig, prefix: str = "") -> list:
    """Unknown keys, with the closest valid key suggested."""
    problems = []
    fields = model.model_fields
    for key, value in layer.data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            valid = ", ".join(fields)
            problems.append(Problem(layer.source, path, f"unknown key{hint} (valid: {valid})"))
            continue
        annotation = fields[key].annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if nested and isinstance(value, Mapping):
            problems += _validate_keys(Layer(layer.source, dict(value)), annotation, f"{path}.")
    return problems


def resolve(
    country: str | None = None,
    period: str | None = None,
    category: str | None = None,
    configs: Iterable[str] = (),
    patches: Iterable[str] = (),
    project_dir: Path | str | None = None,
) -> ResolvedConfig:
    """Merge every layer into one validated config.

    Args:
        country, period, category: run identity from the caller (e.g. Ploomber's env);
            ``None`` falls back to ``env.yaml``. ``--config`` files and patches win over it.
        configs: extra layer URLs (local paths or fsspec URLs), lowest first.
        patches: ``key.path=value`` strings, applied last, in order.
        project_dir: the repository holding ``configs/`` and ``env.yaml``.

    Returns:
        The validated config with the origin of every leaf.

    Raises:
        ConfigError: naming the file or patch, the key path and the problem.
    """
    project_dir = project.resolve(project_dir)
    project_dir = Path(project_dir)
    configs_dir = project_dir / "configs"

    top = [Layer(url, _read_layer(str(url))) for url in configs]
    top += [Layer(f"--patch {p}", parse_patch(p)) for p in patches]

    # Identity first: it decides which overlays apply.
    identity: dict[str, Any] = {}
    identity_origin: dict[str, str] = {}
    env_values = _env_identity(project_dir)
    caller = {"country": country, "period": period, "category": category}
    for key in IDENTITY_KEYS:
        if caller[key] is not None:
            identity[key], identity_origin[key] = caller[key], f"env (--env--{key})"
        elif key in env_values:
            identity[key], identity_origin[key] = env_values[key], "env.yaml"
    for layer in top:
        for key in IDENTITY_KEYS:
            if key in layer.data:
                identity[key], identity_origin[key] = layer.data[key], layer.source
    identity = {k: _normalise_identity(v) for k, v in identity.items()}
    # Identity values name overlay files: check their shape before building any path.
    bad = [
        Problem(identity_origin[key], key, f"{IDENTITY_PATTERNS[key][1]} (got {value!r})")
        for key, value in identity.items()
        if value is not None and not re.fullmatch(IDENTITY_PATTERNS[key][0], value, re.ASCII)
    ]
    if bad:
        raise ConfigError(bad)

    layers = [_file_layer(configs_dir / "defaults.yaml", project_dir)]
    problems: list[Problem] = []
    market = identity.get("country")
    if market is not None:
        market_file = configs_dir / "markets" / f"{market}.yaml"
        if market_file.exists():
            layers.append(_file_layer(market_file, project_dir))
        else:
            known = ", ".join(known_markets(project_dir))
            problems.append(
                Problem(
                    identity_origin["country"],
                    "country",
                    f"unknown market {market!r}: no {market_file.relative_to(project_dir)} "
                    f"(known: {known})",
                )
            )
    for key, folder in (("period", "periods"), ("category", "categories")):
        value = identity.get(key)
        overlay = configs_dir / folder / f"{value}.yaml"
        if value is not None and overlay.exists():
            layers.append(_file_layer(overlay, project_dir))

    for layer in layers[1:]:
        for key in IDENTITY_KEYS:
            if key in layer.data:
                problems.append(
                    Problem(
                        layer.source,
                        key,
                        "overlays cannot change the run identity; set it in env.yaml, "
                        "--config or --patch",
                    )
                )
    for layer in layers + top:
        problems += _validate_keys(layer)
    if problems:
        raise ConfigError(problems)

    merged: dict = {}
    origins: dict[str, str] = {}
    for layer in layers:
        _merge(merged, layer.data, origins, layer.source)
    for key, value in identity.items():
        _merge(merged, {key: value}, origins, identity_origin[key])
    for layer in top:
        _merge(merged, layer.data, origins, layer.source)
        for key in IDENTITY_KEYS:  # identity keys keep their normalised form
            if key in layer.data:
                merged[key] = identity[key]

    try:
        config = ToolkitConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_problems_from(exc, origins)) from None
    return ResolvedConfig(config, origins, [layer.source for layer in layers + top])


def _problems_from(exc: ValidationError, origins: Mapping[str, str]) -> list[Problem]:
    problems = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        source = origins.get(path)
        if source is None:  # a model-level check: blame the layer that set a child last
            children = [v for k, v in origins.items() if k.startswith(f"{path}.")]
            source = children[-1] if children else "configs"
        value = error.get("input")
        shown = f" (got {value!r})" if not isinstance(value, dict) else ""
        message = error["msg"].removeprefix("Value error, ")
        problems.append(Problem(source, path, f"{message}{shown}"))
    return problems
