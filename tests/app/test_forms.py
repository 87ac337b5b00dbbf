"""The Launch form comes from the config model: fields, bounds, help, patches and checks."""

from __future__ import annotations

import pytest
from logic import forms

from toolkit import config as config_mod

US = forms.Identity("US", "2026-11")


def leaves(model, prefix=""):
    out = {}
    for name, info in model.model_fields.items():
        annotation = forms._unwrap_optional(info.annotation)[0]
        if forms._is_model(annotation):
            out.update(leaves(annotation, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = info
    return out


def test_every_setting_of_the_model_is_a_field_with_its_description_and_bounds():
    model = leaves(config_mod.ToolkitConfig)
    specs = {s.key: s for s in forms.form_fields()}
    operator = {key for key in model if config_mod.operator_key(key)}
    assert operator >= {"output.endpoint", "execution.scheduler", "execution.executor"}
    assert set(specs) == set(model) - set(config_mod.IDENTITY_KEYS) - operator
    for key, spec in specs.items():
        assert spec.help == model[key].description, key
        assert spec.default == model[key].get_default(call_default_factory=True)
    revenue = specs["optimize.weights.revenue"]
    assert (revenue.kind, revenue.minimum, revenue.maximum) == ("slider", 0.0, 1.0)
    discount = specs["optimize.constraints.max_discount"]
    assert (discount.kind, discount.minimum, discount.maximum) == ("float", 0.0, 1.0)
    assert discount.max_exclusive and not discount.min_exclusive
    assert discount.bounds_text == "at least 0%, below 100%"  # a fraction, shown as percent
    assert specs["optimize.constraints.max_changes"].kind == "int"
    assert specs["optimize.constraints.price_levels"].max_items == 25
    assert specs["forecast.season_length"].bounds_text == "2 to 52"


def test_groups_put_weights_and_constraints_first_and_the_rest_in_advanced():
    groups = forms.form_groups()
    assert [g.name for g in groups[:2]] == ["weights", "constraints"]
    assert not groups[0].advanced and not groups[1].advanced
    assert {g.name for g in groups[2:]} == {"load_transform", "underperformers", "forecast"}
    assert all(g.advanced for g in groups[2:])
    assert all(s.kind == "slider" for s in groups[0].fields)
    assert groups[0].help == "Objective weights."


@pytest.mark.parametrize(
    "value",
    [
        "US; touch x",
        "$(id)",
        "`id`",
        "--help",
        "NO",
        "2026-11",
        "a: b",
        "#comment",
        "[1, 2]",
        "null",
        'quote " and \\ backslash',
        "line\nbreak",
        "ünïcode",
        None,
        True,
        0,
        12,
        0.1,
        -0.3,
        1e10,
        [-0.3, 0.0, 0.05],
    ],
)
def test_values_are_written_as_literals_that_read_back_unchanged(value):
    assert config_mod.parse_patch(f"k={forms.format_value(value)}") == {"k": value}


def test_non_finite_numbers_are_refused():
    with pytest.raises(ValueError):
        forms.format_value(float("nan"))


def test_patches_only_for_changed_model_keys():
    base = forms.values_of(forms.baseline(US))
    values = dict(base, **{"optimize.weights.revenue": 0.55})
    assert forms.patches_from(values, base) == ["optimize.weights.revenue=0.55"]
    with pytest.raises(KeyError):
        forms.patches_from({"optimize.weights.revenue; rm": 1}, base)


def test_baseline_applies_the_market_and_month_overlays():
    values = forms.values_of(forms.baseline(US))
    assert values["optimize.constraints.markdown_budget"] == 60000  # configs/markets/US.yaml
    assert values["optimize.constraints.max_discount"] == 0.3  # configs/periods/2026-11.yaml


def test_check_explains_an_invalid_combination():
    base = forms.values_of(forms.baseline(US))
    zero = {f"optimize.weights.{k}": 0.0 for k in ("revenue", "margin", "volume")}
    checked = forms.check(US, dict(base, **zero))
    assert not checked.ok and checked.resolved is None
    [problem] = checked.problems
    assert problem.group == "weights" and "at least one" in problem.message


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("underperformers.decline_threshold", 0.0, "must be above 0%, at most 100%; it is 0%"),
        ("optimize.constraints.max_discount", 1.0, "must be at least 0%, below 100%; it is 100%"),
        ("optimize.constraints.max_changes", 20_000, "must be 0 to 10,000; it is 20,000"),
        ("optimize.constraints.max_changes", 2.5, "must be a whole number"),
        ("optimize.constraints.price_levels", [-1.5, 0.0], "above -100% and at most +100%"),
        ("optimize.constraints.price_levels", [], "choose at least 1"),
        ("forecast.horizon", 53, "must be 1 to 52; it is 53"),
        ("optimize.weights.revenue", "lots", "must be a number"),
    ],
)
def test_check_explains_out_of_range_values_per_field(key, value, words):
    base = forms.values_of(forms.baseline(US))
    checked = forms.check(US, dict(base, **{key: value}))
    assert not checked.ok
    assert any(words in p.message for p in checked.problems), checked.problems
    assert checked.problems[0].group == forms.field_spec(key).group


@pytest.mark.parametrize(
    "identity",
    [
        forms.Identity("US; touch x", "2026-11"),
        forms.Identity("../../pipeline", "2026-11"),
        forms.Identity("$(id)", "2026-11"),
        forms.Identity("US", "2026-13"),
        forms.Identity("US", "2026-11", "--help"),
        forms.Identity("XX", "2026-11"),
    ],
)
def test_bad_identities_are_refused_before_any_file_is_read(identity):
    checked = forms.check(identity, forms.values_of(forms.baseline(US)))
    assert not checked.ok and checked.problems[0].group == "identity"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("output.endpoint", "http://169.254.169.254/latest/meta-data/"),
        ("output.allowed_endpoints", ["http://169.254.169.254/"]),
        ("output.allow_addresses", ["169.254.0.0/16"]),
        ("execution.scheduler", "tcp://scheduler.attacker.example:8786"),
        ("execution.executor", "dask"),
        ("execution.kernel", "fresh"),
        ("execution", None),
    ],
)
def test_operator_settings_are_refused_with_a_reason(key, value):
    base = forms.values_of(forms.baseline(US))
    assert not any(config_mod.operator_key(k) for k in base)  # the form never sends them
    checked = forms.check(US, dict(base, **{key: value}))
    assert not checked.ok and checked.resolved is None
    [problem] = checked.problems
    assert problem.key == key
    assert str(problem) == f"{key}: {forms.OPERATOR_SETTING}"


def test_a_valid_form_resolves_to_identity_and_change_patches():
    identity = forms.Identity("US", "2026-11", "electronics")
    base = forms.values_of(forms.baseline(identity))
    checked = forms.check(identity, dict(base, **{"forecast.horizon": 8}))
    assert checked.ok
    assert checked.patches == [
        'country="US"',
        'period="2026-11"',
        'category="electronics"',
        "forecast.horizon=8",
    ]
    cfg = checked.resolved.config
    assert (cfg.country, cfg.period, cfg.category, cfg.forecast.horizon) == (
        "US",
        "2026-11",
        "electronics",
        8,
    )


def test_differences_name_the_layer_of_each_value():
    base = forms.values_of(forms.baseline(US))
    checked = forms.check(US, dict(base, **{"optimize.weights.margin": 0.7}))
    rows = {r["Key"]: r for r in forms.differences(checked.resolved)}
    assert rows["optimize.weights.margin"]["Set by"] == "Changed in this form"
    assert rows["optimize.constraints.markdown_budget"]["Set by"].startswith("Market US")
    assert rows["optimize.constraints.max_discount"]["Set by"].startswith("Period 2026-11")
    assert rows["optimize.constraints.markdown_budget"]["Default"] == "50,000"
    assert "forecast.horizon" not in rows  # at its default


def test_period_options_are_recent_months_and_overlays():
    import datetime as dt

    options = forms.period_options(today=dt.date(2027, 2, 10), months=3)
    assert options[:3] == ["2027-02", "2027-01", "2026-12"]
    assert "2026-11" in options  # configs/periods/2026-11.yaml


@pytest.mark.parametrize(
    ("message", "key", "plain"),
    [
        (
            "Input should be less than 1 (got 1.0)",
            "optimize.constraints.max_discount",
            "must be below 100%",
        ),
        (
            "Input should be greater than or equal to 60 (got 10)",
            "load_transform.history_weeks",
            "must be at least 60",
        ),
        (
            "List should have at least 1 item after validation, not 0",
            "optimize.constraints.price_levels",
            "choose at least 1",
        ),
        (
            "String should match pattern '^https?://[^\\s]+$' (got 'x')",
            None,
            "is not in the expected form",
        ),
        (
            "Input should be a valid integer, got a number with a fractional part (got 2.5)",
            "forecast.horizon",
            "must be a whole number",
        ),
        ("Input should be 'serial' or 'dask' (got 'x')", None, "must be one of serial or dask"),
    ],
)
def test_validator_messages_are_reworded_in_business_words(message, key, plain):
    spec = forms.field_spec(key) if key else None
    assert forms.plain_message(message, spec) == plain


def test_no_validator_jargon_reaches_the_form():
    base = forms.values_of(forms.baseline(US))
    for key, value in [
        ("optimize.constraints.max_discount", 1.0),
        ("optimize.constraints.price_levels", []),
        ("load_transform.history_weeks", 10),
    ]:
        [problem] = forms.check(US, dict(base, **{key: value})).problems
        for jargon in ("Input should", "List should", "pattern", "got ", "validation"):
            assert jargon not in problem.message, problem


def test_percent_fields_round_trip_between_form_and_config():
    spec = forms.field_spec("optimize.constraints.min_margin")
    for fraction in (0.0, 0.15, 0.175, 0.3, 0.99):
        assert forms.from_widget(spec, forms.to_widget(spec, fraction)) == fraction
    assert forms.to_widget(spec, 0.15) == 15.0
    assert forms.display_setting("optimize.constraints.min_margin", 0.15) == "15%"
    assert forms.display_setting("optimize.constraints.markdown_budget", 40000, "EUR") == (
        "40,000 EUR"
    )


def test_period_options_are_the_months_the_data_can_plan_when_known():
    plannable = ["2027-01", "2026-12", "2026-11"]
    assert forms.period_options(plannable=plannable) == plannable  # no overlay months added
    assert forms.period_options(plannable=plannable, extra=["2026-08"])[-1] == "2026-08"
