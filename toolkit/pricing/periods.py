"""The weekly calendar of a run: the month being priced, the history before it, the gap.

A period ``P`` (``YYYY-MM``) is the month whose prices a run sets. Sales are weekly,
Monday to Sunday, and a week belongs to the month of its Thursday (the ISO 8601 rule:
most of its days are there), so every week belongs to exactly one month and months have
4 or 5 weeks. A run for ``P`` learns from the complete weeks before ``P``'s first week,
at most ``max_gap_weeks`` before it, and forecasts every week from there to ``P``'s
last week::

    history (history_weeks)           gap (0..max_gap_weeks)   P (4 or 5 weeks)
    |------------------------------|  |-- forecast ---------|  |-- forecast, priced --|
                                   ^ last complete week of sales before P
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd

__all__ = [
    "HistoryError",
    "Timeline",
    "last_complete_sunday",
    "plannable",
    "timeline",
    "weeks_of",
    "weeks_through",
]

_WEEK = pd.Timedelta(weeks=1)


class HistoryError(ValueError):
    """The sales cannot give the period its history; the message says what is missing."""


def weeks_of(period: str) -> pd.DatetimeIndex:
    """Mondays of the weeks of ``period``: those whose Thursday falls in the month."""
    month = pd.Period(period, freq="M")
    start = month.start_time.normalize()
    first_thursday = start + pd.Timedelta(days=(3 - start.dayofweek) % 7)
    thursdays = pd.date_range(first_thursday, month.end_time.normalize(), freq="7D")
    return (thursdays - pd.Timedelta(days=3)).as_unit("ns")  # as the sales dates are


def weeks_through(period: str, last_week: pd.Timestamp) -> int:
    """How many weeks follow the week of ``last_week`` up to the end of ``period``."""
    return max(0, int((weeks_of(period)[-1] - pd.Timestamp(last_week)) / _WEEK))


def last_complete_sunday(day: dt.date | str | pd.Timestamp) -> pd.Timestamp:
    """The Sunday ending the last Monday-to-Sunday week that is over before ``day`` ends.

    A Sunday is its own answer for data through that day; any other day gives the Sunday
    before it.
    """
    day = pd.Timestamp(day).normalize()
    return day - pd.Timedelta(days=(day.dayofweek + 1) % 7)


@dataclass(frozen=True)
class Timeline:
    """Where a run's history ends, how far it is from the period, and the period's weeks."""

    period: str
    history: pd.DatetimeIndex  # Mondays of the history weeks, oldest first
    gap_weeks: int  # weeks between the history and the period, forecast but not priced
    priced: pd.DatetimeIndex  # Mondays of the period's weeks

    @property
    def forecast(self) -> pd.DatetimeIndex:
        """Mondays of every week after the history up to the period's last week."""
        return pd.date_range(self.history[-1] + _WEEK, self.priced[-1], freq="7D", unit="ns")

    def describe(self) -> str:
        sunday = pd.Timedelta(days=6)
        return (
            f"period {self.period}: history {self.history[0]:%Y-%m-%d}.."
            f"{self.history[-1] + sunday:%Y-%m-%d} ({len(self.history)} weeks), "
            f"gap {self.gap_weeks} weeks, priced weeks {self.priced[0]:%Y-%m-%d}.."
            f"{self.priced[-1] + sunday:%Y-%m-%d} ({len(self.priced)} weeks)"
        )


def timeline(
    period: str, last_sales_day: pd.Timestamp, history_weeks: int, max_gap_weeks: int
) -> Timeline:
    """The weeks a run for ``period`` learns from, forecasts and prices.

    The history ends with the last complete week of sales before the period's first
    week; sales after that (the period's actual sales, for a past period) are never
    part of it.

    Raises:
        HistoryError: the last complete week of sales is more than ``max_gap_weeks``
            before the period, naming the last day found and the gap.
    """
    priced = weeks_of(period)
    before = priced[0] - _WEEK  # the week just before the period
    last = min(before, last_complete_sunday(last_sales_day) - pd.Timedelta(days=6))
    gap = int((before - last) / _WEEK)
    if gap > max_gap_weeks:
        raise HistoryError(
            f"raw sales end on {pd.Timestamp(last_sales_day):%Y-%m-%d}: their last complete "
            f"week ({last:%Y-%m-%d}..{last + pd.Timedelta(days=6):%Y-%m-%d}) is {gap} weeks "
            f"before period {period} starts (week of {priced[0]:%Y-%m-%d}), more than "
            f"load_transform.max_gap_weeks={max_gap_weeks}"
        )
    history = pd.date_range(end=last, periods=history_weeks, freq="7D", unit="ns")
    return Timeline(period, history, gap, priced)


def plannable(
    first_sales_day: dt.date | str | pd.Timestamp,
    last_sales_day: dt.date | str | pd.Timestamp,
    history_weeks: int,
    max_gap_weeks: int,
) -> list[str]:
    """The months a run can plan with sales from ``first_sales_day`` to ``last_sales_day``,
    newest first: those whose whole history lies within the sales and ends at most
    ``max_gap_weeks`` before them (``timeline``'s rule)."""
    first_monday = pd.Timestamp(first_sales_day).normalize()
    first_monday -= pd.Timedelta(days=first_monday.dayofweek)
    # The latest month a gap allows starts within max_gap_weeks (+ its first week) after.
    horizon = pd.Timestamp(last_sales_day) + pd.Timedelta(weeks=max_gap_weeks + 2)
    months = pd.period_range(pd.Timestamp(first_sales_day), horizon, freq="M")
    out = []
    for month in months:
        try:
            window = timeline(str(month), last_sales_day, history_weeks, max_gap_weeks)
        except HistoryError:
            continue
        if window.history[0] >= first_monday:
            out.append(str(month))
    return out[::-1]
