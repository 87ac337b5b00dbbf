"""The weekly calendar of a priced month: its weeks, the history before it, the gap."""

from __future__ import annotations

import pandas as pd
import pytest

from toolkit.pricing import periods


def mondays(*days: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(day) for day in days]


def test_a_month_starting_on_monday_starts_with_its_first_day():
    assert list(periods.weeks_of("2026-06")) == mondays(
        "2026-06-01", "2026-06-08", "2026-06-15", "2026-06-22"
    )
    assert periods.weeks_of("2026-05")[-1] == pd.Timestamp("2026-05-25")  # Sun 31 May


def test_a_month_starting_on_sunday_leaves_that_week_to_the_month_before():
    # Sun 1 November belongs to the week of Thu 29 October.
    assert list(periods.weeks_of("2026-11")) == mondays(
        "2026-11-02", "2026-11-09", "2026-11-16", "2026-11-23"
    )
    assert periods.weeks_of("2026-10")[-1] == pd.Timestamp("2026-10-26")


def test_the_53rd_week_of_a_year_belongs_to_december():
    december = periods.weeks_of("2026-12")
    assert len(december) == 5 and december[-1] == pd.Timestamp("2026-12-28")  # to Sun 3 Jan
    assert december[-1].isocalendar().week == 53
    assert periods.weeks_of("2027-01")[0] == pd.Timestamp("2027-01-04")


def test_every_week_belongs_to_exactly_one_month():
    months = pd.period_range("2019-01", "2031-12", freq="M").strftime("%Y-%m")
    weeks = pd.DatetimeIndex([week for month in months for week in periods.weeks_of(month)])
    assert (weeks.to_series().diff().dropna() == pd.Timedelta(weeks=1)).all()
    per_iso_year = weeks.to_series().dt.isocalendar().groupby("year").size()
    assert per_iso_year[2020] == per_iso_year[2026] == 53  # the ISO long years
    assert per_iso_year[2025] == per_iso_year[2027] == 52
    assert {len(periods.weeks_of(month)) for month in months} == {4, 5}


@pytest.mark.parametrize(
    ("day", "sunday"),
    [
        ("2026-11-29", "2026-11-29"),  # a Sunday: data through it holds its week
        ("2026-11-30", "2026-11-29"),
        ("2026-12-04", "2026-11-29"),
        ("2026-12-05", "2026-11-29"),
    ],
)
def test_last_complete_sunday(day, sunday):
    assert periods.last_complete_sunday(day) == pd.Timestamp(sunday)


def test_this_month_with_sales_through_last_week():
    # 4 December 2026: sales through Sunday 29 November.
    window = periods.timeline("2026-12", pd.Timestamp("2026-11-29"), 156, 8)
    assert window.history[-1] == pd.Timestamp("2026-11-23") and len(window.history) == 156
    assert window.gap_weeks == 0
    assert list(window.forecast) == list(window.priced) == list(periods.weeks_of("2026-12"))


def test_next_month_bridges_the_gap_with_forecast_weeks():
    window = periods.timeline("2027-01", pd.Timestamp("2026-12-02"), 156, 8)  # a Wednesday
    assert window.history[-1] == pd.Timestamp("2026-11-23")  # the partial week is left out
    assert window.gap_weeks == 5  # Nov 30 .. Dec 28
    assert len(window.forecast) == 9 and window.forecast[-1] == pd.Timestamp("2027-01-25")
    assert periods.weeks_through("2027-01", window.history[-1]) == 9
    assert "gap 5 weeks" in window.describe()


def test_a_past_period_learns_only_from_the_weeks_before_it():
    window = periods.timeline("2026-06", pd.Timestamp("2026-11-29"), 52, 0)
    assert window.history[-1] == pd.Timestamp("2026-05-25") and window.gap_weeks == 0


def test_sales_ending_too_long_before_the_period_name_the_last_day_and_the_gap():
    with pytest.raises(periods.HistoryError) as err:
        periods.timeline("2027-03", pd.Timestamp("2026-11-29"), 156, 8)
    assert str(err.value) == (
        "raw sales end on 2026-11-29: their last complete week (2026-11-23..2026-11-29) is "
        "13 weeks before period 2027-03 starts (week of 2027-03-01), more than "
        "load_transform.max_gap_weeks=8"
    )
    assert periods.timeline("2027-02", pd.Timestamp("2026-11-29"), 156, 9).gap_weeks == 9


def test_plannable_months_are_those_whose_history_the_sales_cover():
    # Sales 2024-01-01 (a Monday) .. 2026-11-29 (a Sunday): 152 complete weeks.
    months = periods.plannable("2024-01-01", "2026-11-29", history_weeks=104, max_gap_weeks=8)
    # Newest: January 2027 (its first week is 5 weeks after the sales); February's would be 9.
    assert months[0] == "2027-01" and "2027-02" not in months
    # Oldest: the first month with 104 complete weeks of sales before it.
    assert months[-1] == "2026-01"
    assert months == sorted(months, reverse=True) and len(months) == 13
    assert periods.plannable("2024-01-01", "2026-11-29", 156, 8) == []  # too short a history
    assert periods.plannable("2024-01-01", "2026-11-29", 104, 4)[0] == "2026-12"
