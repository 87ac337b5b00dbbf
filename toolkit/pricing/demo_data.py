"""Deterministic, seeded demo data: product catalogs and daily raw sales per market.

Everything here is SYNTHETIC: no real products, prices or sales. The data is built
so that a price-recommendation pipeline has real structure to find: yearly
seasonality per category (toys and electronics peak in Nov-Dec, apparel in spring,
home in early summer), a weekly shopping pattern, a mild per-product trend,
permanent list-price changes (the catalog holds the current list price) and short
promotions whose effect on demand follows a per-product price elasticity in
[-3.0, -0.8], and exactly one product in ten that
really declines over the last months (see `declining_products`). Markets share the
product list but differ in currency, price level, demand level and seasonal
amplitude. Each product draws its attributes from its own random stream keyed by
(seed, market, product number), so a market's data never depends on which other
markets, or how many further products, are generated.
"""

from __future__ import annotations

import datetime as dt
import functools
import zlib
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from toolkit.data import io, schemas, storage
from toolkit.pricing import periods

MARKETS: dict[str, str] = {
    "US": "USD",
    "DE": "EUR",
    "NO": "NOK",
    "FR": "EUR",
    "GB": "GBP",
    "SE": "SEK",
}

CATEGORIES: tuple[str, ...] = ("electronics", "grocery", "apparel", "home", "toys", "beauty")

START = "2023-06-05"  # a Monday: the first day of the demo sales
END = "2026-11-29"  # make_sales' default last day: the demo as written on 2026-12-04


class _MarketProfile(NamedTuple):
    price_factor: float  # local list price per USD of base price
    demand_level: float  # multiplier on every product's base demand
    season_amplitude: float  # multiplier on the category seasonal swings


_MARKET_PROFILES: dict[str, _MarketProfile] = {
    "US": _MarketProfile(1.00, 1.20, 1.00),
    "DE": _MarketProfile(0.95, 1.00, 0.90),
    "NO": _MarketProfile(10.5, 0.60, 1.15),
    "FR": _MarketProfile(0.95, 0.90, 0.95),
    "GB": _MarketProfile(0.80, 1.00, 1.05),
    "SE": _MarketProfile(10.8, 0.70, 1.10),
}


class _CategoryProfile(NamedTuple):
    usd_price_range: tuple[float, float]  # base list prices are log-uniform in here
    nouns: tuple[str, ...]
    season_amplitude: float  # size of the smooth yearly cosine swing
    season_peak_doy: int  # day of year where that swing peaks
    holiday_bump: float  # extra demand around early/mid December


_CATEGORY_PROFILES: dict[str, _CategoryProfile] = {
    "electronics": _CategoryProfile(
        (15.0, 600.0),
        ("Headphones", "Speaker", "Charger", "Camera", "Smartwatch", "Keyboard"),
        0.10,
        340,
        0.8,
    ),
    "grocery": _CategoryProfile(
        (1.0, 12.0),
        ("Coffee", "Olive Oil", "Granola", "Tea", "Pasta", "Chocolate"),
        0.05,
        350,
        0.25,
    ),
    "apparel": _CategoryProfile(
        (8.0, 120.0),
        ("Jacket", "Sneakers", "T-Shirt", "Jeans", "Dress", "Scarf"),
        0.30,
        110,
        0.2,
    ),
    "home": _CategoryProfile(
        (5.0, 250.0),
        ("Lamp", "Cushion", "Vase", "Blanket", "Planter", "Mug"),
        0.15,
        140,
        0.3,
    ),
    "toys": _CategoryProfile(
        (5.0, 90.0),
        ("Puzzle", "Robot", "Doll", "Building Set", "Board Game", "Plush"),
        0.20,
        345,
        1.5,
    ),
    "beauty": _CategoryProfile(
        (4.0, 70.0),
        ("Serum", "Shampoo", "Lipstick", "Perfume", "Face Cream", "Lotion"),
        0.10,
        350,
        0.5,
    ),
}

_BRANDS = (
    "Aurora",
    "Nimbus",
    "Vertex",
    "Solace",
    "Harbor",
    "Juniper",
    "Cobalt",
    "Meridian",
    "Lumen",
    "Brightwood",
    "Nordic",
    "Atlas",
)

# Monday..Sunday multipliers: shoppers buy more at the end of the week.
_WEEKDAY_FACTORS = np.array([0.90, 0.88, 0.92, 0.97, 1.08, 1.20, 1.05])

_HOLIDAY_CENTER_DOY = 344  # around Dec 10: gift shopping peaks before Christmas
_HOLIDAY_WIDTH_DAYS = 14.0

_DECLINE_BLOCK = 10  # exactly one product in every block of 10 declines

_CATALOG_COLUMNS = ["product_id", "product_name", "category", "list_price", "unit_cost", "currency"]
_SALES_COLUMNS = ["date", "product_id", "units", "unit_price", "promo"]


class _ProductTraits(NamedTuple):
    """Market-independent attributes of one product."""

    brand: str
    noun: str
    usd_price: float
    cost_fraction: float
    base_demand: float  # units per day before market, season and price effects
    elasticity: float
    trend_per_year: float
    dispersion: float  # negative-binomial shape; lower means noisier days


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """Random stream keyed by seed and labels; crc32 keeps string keys stable across runs."""
    entropy = [seed] + [zlib.crc32(k.encode()) if isinstance(k, str) else k for k in keys]
    return np.random.default_rng(entropy)


def _check_market(market: str) -> None:
    if market not in MARKETS:
        raise ValueError(f"unknown market {market!r}; expected one of {sorted(MARKETS)}")


def _product_id(number: int) -> str:
    return f"P{number:04d}"


def _category_of(seed: int, number: int) -> str:
    """Category of product `number` (1-based).

    Categories are shuffled within consecutive blocks of len(CATEGORIES) products,
    so every category gets an equal share of the catalog.
    """
    block, position = divmod(number - 1, len(CATEGORIES))
    return CATEGORIES[_category_order(seed, block)[position]]


@functools.lru_cache(maxsize=4096)
def _category_order(seed: int, block: int) -> tuple[int, ...]:
    # Cached because all products of a block ask for the same permutation.
    return tuple(int(i) for i in _rng(seed, "category", block).permutation(len(CATEGORIES)))


def _product_traits(seed: int, number: int, category: str) -> _ProductTraits:
    rng = _rng(seed, "product", number)
    profile = _CATEGORY_PROFILES[category]
    low, high = profile.usd_price_range
    return _ProductTraits(
        brand=str(rng.choice(_BRANDS)),
        noun=str(rng.choice(profile.nouns)),
        usd_price=float(np.exp(rng.uniform(np.log(low), np.log(high)))),
        cost_fraction=float(rng.uniform(0.40, 0.75)),
        base_demand=float(np.exp(rng.uniform(np.log(2.0), np.log(60.0)))),
        elasticity=float(rng.uniform(-3.0, -0.8)),
        trend_per_year=float(np.clip(rng.normal(0.0, 0.04), -0.10, 0.10)),
        dispersion=float(rng.uniform(5.0, 20.0)),
    )


def _declining_numbers(market: str, seed: int, n_products: int) -> set[int]:
    # One decliner per block of 10 keeps the count at exactly 10% (24 of 240) and
    # makes a product's status independent of how many products are generated.
    numbers = set()
    for block in range(-(-n_products // _DECLINE_BLOCK)):
        offset = int(_rng(seed, "decline", market, block).integers(_DECLINE_BLOCK))
        number = block * _DECLINE_BLOCK + offset + 1
        if number <= n_products:
            numbers.add(number)
    return numbers


def declining_products(market: str, n_products: int = 240, seed: int = 42) -> set[str]:
    """Return the ids of the products whose demand really declines in `market`.

    Exactly one product in every ten declines (24 of 240). The set differs per
    market. In `make_sales`, each decliner's demand decays linearly, from a random
    day 90-270 days before the end of the sales window, to 40-70% of its level on
    the last day.

    Args:
        market: Market code, one of MARKETS.
        n_products: Catalog size used for `make_catalog`.
        seed: Seed used for `make_catalog` and `make_sales`.

    Returns:
        Product ids such as {"P0007", "P0013", ...}.
    """
    _check_market(market)
    return {_product_id(n) for n in _declining_numbers(market, seed, n_products)}


def make_catalog(market: str, n_products: int = 240, seed: int = 42) -> pd.DataFrame:
    """Build the product catalog of one market.

    Every market has the same products (ids, names, categories); prices are in the
    market currency and vary a little per market.

    Args:
        market: Market code, one of MARKETS.
        n_products: Number of products, ids P0001..P{n_products:04d}.
        seed: Random seed; same arguments always give the same catalog.

    Returns:
        DataFrame with columns product_id, product_name, category (str),
        list_price (the current list price: what `make_sales` charges on the
        last day off promotion), unit_cost (float64, below list_price) and
        currency (str).
    """
    _check_market(market)
    if n_products < 1:
        raise ValueError(f"n_products must be positive, got {n_products}")
    profile = _MARKET_PROFILES[market]
    rows = []
    for number in range(1, n_products + 1):
        category = _category_of(seed, number)
        traits = _product_traits(seed, number, category)
        # Local prices are not an exact FX conversion: each market prices +-8%.
        market_noise = _rng(seed, "price", market, number).uniform(0.92, 1.08)
        list_price = round(traits.usd_price * profile.price_factor * market_noise, 2)
        rows.append(
            (
                _product_id(number),
                f"{traits.brand} {traits.noun} {number}",
                category,
                list_price,
                round(list_price * traits.cost_fraction, 2),
                MARKETS[market],
            )
        )
    catalog = pd.DataFrame(rows, columns=_CATALOG_COLUMNS)
    return catalog.astype(
        {
            "product_id": "str",
            "product_name": "str",
            "category": "str",
            "list_price": "float64",
            "unit_cost": "float64",
            "currency": "str",
        }
    )


def _seasonality(dates: pd.DatetimeIndex, amplitude_factor: float) -> dict[str, np.ndarray]:
    """Yearly demand multiplier per category for each date."""
    doy = dates.day_of_year.to_numpy()
    # Circular distance in days to the holiday peak, so late Dec / early Jan wrap.
    to_holiday = (doy - _HOLIDAY_CENTER_DOY + 182) % 365 - 182
    holiday = np.exp(-0.5 * (to_holiday / _HOLIDAY_WIDTH_DAYS) ** 2)
    season = {}
    for category, p in _CATEGORY_PROFILES.items():
        smooth = p.season_amplitude * np.cos(2 * np.pi * (doy - p.season_peak_doy) / 365.25)
        season[category] = 1.0 + amplitude_factor * (smooth + p.holiday_bump * holiday)
    return season


def _price_multiplier(rng: np.random.Generator, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Shelf price relative to the catalog list price, and the promo flag, per day."""
    # 1-3 permanent list-price changes, one per equal slice of the window, so the
    # changes are spread out and each price level lasts long enough to learn from.
    n_changes = int(rng.integers(1, 4))
    slice_len = n_days / n_changes
    multiplier = np.ones(n_days)
    for k in range(n_changes):
        lo = int(k * slice_len + slice_len / 4)
        hi = max(lo + 1, int(k * slice_len + 3 * slice_len / 4))
        day = int(rng.integers(lo, hi))
        size = rng.uniform(0.03, 0.15) * rng.choice([-1.0, 1.0])
        multiplier[day:] *= 1.0 + size
    # The catalog holds the *current* list price, so earlier levels are relative
    # to the last one: on the last day a product off promotion sells at list_price.
    multiplier /= multiplier[-1]

    # Promotions: a few 1-2 week windows per year at 10-30% off.
    promo = np.zeros(n_days, dtype=bool)
    discount = np.zeros(n_days)
    per_year = rng.uniform(2.0, 5.0)
    n_promos = int(rng.poisson(per_year * n_days / 365.25))
    for _ in range(n_promos):
        first = int(rng.integers(n_days))
        length = int(rng.integers(7, 15))
        promo[first : first + length] = True
        discount[first : first + length] = rng.uniform(0.10, 0.30)
    return multiplier * (1.0 - discount), promo


def _decline_multiplier(rng: np.random.Generator, n_days: int) -> np.ndarray:
    """Linear decay from 1 to a 40-70% level between a late start day and the last day."""
    days_before_end = int(rng.integers(90, 271))
    final_level = rng.uniform(0.40, 0.70)
    first = max(0, n_days - 1 - days_before_end)
    multiplier = np.ones(n_days)
    span = n_days - 1 - first
    if span > 0:
        progress = np.arange(span + 1) / span
        multiplier[first:] = 1.0 - (1.0 - final_level) * progress
    return multiplier


def make_sales(
    market: str,
    catalog: pd.DataFrame,
    seed: int = 42,
    start: str = START,
    end: str = END,
) -> pd.DataFrame:
    """Simulate daily raw sales of every catalog product in one market.

    Expected daily units are base demand x market level x category seasonality x
    weekday factor x trend x decline x (unit_price / list_price) ** elasticity;
    units are negative-binomial draws around that. Price changes, promotions and
    declines are placed relative to [start, end], so a different window is a new
    simulation, not a slice of the default one.

    Args:
        market: Market code, one of MARKETS.
        catalog: Output of `make_catalog` for the same market and seed (a subset
            of its rows is fine; ids must look like "P0001").
        seed: Random seed; same arguments always give the same sales.
        start: First sales day (inclusive).
        end: Last sales day (inclusive).

    Returns:
        DataFrame with one row per product per day, in catalog order then by
        date, and columns date (datetime64[ns]), product_id (str), units (int64),
        unit_price (float64, the shelf price that day) and promo (bool).
    """
    _check_market(market)
    dates = pd.date_range(
        pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), freq="D", unit="ns"
    )
    if len(dates) == 0:
        raise ValueError(f"empty sales window: start={start!r} is after end={end!r}")
    n_days = len(dates)
    profile = _MARKET_PROFILES[market]
    season = _seasonality(dates, profile.season_amplitude)
    weekday = _WEEKDAY_FACTORS[dates.day_of_week.to_numpy()]
    years = np.arange(n_days) / 365.25

    numbers = [int(pid[1:]) for pid in catalog["product_id"]]
    decliners = _declining_numbers(market, seed, max(numbers, default=0))

    units, prices, promos = [], [], []
    for number, category, list_price in zip(
        numbers, catalog["category"], catalog["list_price"], strict=True
    ):
        traits = _product_traits(seed, number, category)
        rng = _rng(seed, "sales", market, number)
        level = traits.base_demand * profile.demand_level * rng.lognormal(0.0, 0.2)
        price_multiplier, promo = _price_multiplier(rng, n_days)
        # Drawn for every product so the remaining draws don't depend on status.
        decline = _decline_multiplier(rng, n_days)
        if number not in decliners:
            decline = 1.0
        unit_price = np.round(list_price * price_multiplier, 2)
        mean = (
            level
            * season[category]
            * weekday
            * np.exp(traits.trend_per_year * years)
            * decline
            * (unit_price / list_price) ** traits.elasticity
        )
        # Negative binomial = Poisson with gamma-distributed rate: noisier than
        # Poisson, like real daily sales.
        k = traits.dispersion
        units.append(rng.negative_binomial(k, k / (k + mean)))
        prices.append(unit_price)
        promos.append(promo)

    # Repeating ids with Arrow is ~8x faster than via a numpy object array, which
    # matters at benchmark sizes (2400 products x 1274 days per market).
    ids = pa.array(catalog["product_id"].tolist(), type=pa.string())
    ids = ids.take(np.repeat(np.arange(len(numbers)), n_days))
    return pd.DataFrame(
        {
            "date": np.tile(dates.to_numpy(), len(numbers)),
            "product_id": ids.to_pandas(),
            "units": np.concatenate(units or [np.array([], dtype="int64")]),
            "unit_price": np.concatenate(prices or [np.array([], dtype="float64")]),
            "promo": np.concatenate(promos or [np.array([], dtype=bool)]),
        },
        columns=_SALES_COLUMNS,
        copy=False,
    )


def sales_end(as_of: dt.date | str | None = None) -> pd.Timestamp:
    """The last day of the demo sales written on ``as_of`` (default today): the Sunday
    ending the last complete week before it, as a source system would have it."""
    day = pd.Timestamp(as_of or dt.date.today()).normalize()
    return periods.last_complete_sunday(day - pd.Timedelta(days=1))


def generate(
    markets: Iterable[str] | None = None,
    n_products: int = 240,
    seed: int = 42,
    as_of: dt.date | str | None = None,
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Generate catalog and daily sales for several markets.

    Args:
        markets: Market codes; None means all of MARKETS. A single code string is
            accepted too.
        n_products: Number of products per market (the same products everywhere).
        seed: Random seed.
        as_of: The day the data is written (default today): sales run from START
            through the last complete week before it (``sales_end``).

    Returns:
        Mapping market -> (catalog, sales), in the order the markets were given.
    """
    if markets is None:
        markets = list(MARKETS)
    elif isinstance(markets, str):
        markets = [markets]
    end = sales_end(as_of)
    result = {}
    for market in markets:
        catalog = make_catalog(market, n_products=n_products, seed=seed)
        result[market] = (catalog, make_sales(market, catalog, seed=seed, end=str(end.date())))
    return result


def write(
    markets: Iterable[str] | None = None,
    n_products: int = 240,
    seed: int = 42,
    root: str | None = None,
    as_of: dt.date | str | None = None,
) -> dict[str, dict]:
    """Write each market's catalog and sales to ``<root>/raw/market=<CODE>/`` via contracts.

    Sales run through the last complete week before ``as_of`` (default today), so this
    month and next can be planned.

    Returns:
        Per market: the URLs written, the number of sales rows and the last sales day.
    """
    written = {}
    chosen = generate(markets, n_products=n_products, seed=seed, as_of=as_of)
    for market, (catalog, sales) in chosen.items():
        catalog_url = storage.raw_url(market, "catalog", root)
        sales_url = storage.raw_url(market, "sales", root)
        io.write(catalog, catalog_url, schemas.Catalog)
        io.write(sales, sales_url, schemas.RawSales)
        written[market] = {
            "catalog": catalog_url,
            "sales": sales_url,
            "rows": len(sales),
            "last_day": sales["date"].max(),
        }
    return written
