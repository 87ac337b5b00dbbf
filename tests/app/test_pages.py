"""Every page through Streamlit's AppTest: the form, guards, results, runs and comparison.

Results come from fabricated runs (contract-valid outputs and a record) so these tests take
seconds; test_real_runs.py launches real runs."""

from __future__ import annotations

import pytest
from apphelpers import APP_MAIN, XSS, make_run, new_app, shown, texts
from logic import forms

from toolkit.data import storage
from toolkit.pricing import periods

AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "x" * 32,
    "client_id": "id",
    "client_secret": "secret",
    "server_metadata_url": "https://accounts.example.com/.well-known/openid-configuration",
}
WEIGHTS = [f"cfg.optimize.weights.{k}" for k in ("revenue", "margin", "volume")]


def open_page(at, page, **query):
    at.run()
    at.query_params.update(query)
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def runs_written(root) -> list[str]:
    return storage.listdir(storage.join(root, "runs"))


# ---------------------------------------------------------------------------
# Launch: the generated form and its checks
# ---------------------------------------------------------------------------


def test_the_form_is_generated_from_the_model(app, local_root):
    at = app.run()
    assert not at.exception
    assert at.title[0].value == "Launch a run"
    for key in WEIGHTS:
        slider = at.slider(key=key)
        spec = forms.field_spec(key.removeprefix("cfg."))
        assert (slider.min, slider.max) == (0.0, 1.0)
        assert spec.help in slider.help and "Allowed: 0 to 1" in slider.help
    discount = at.number_input(key="cfg.optimize.constraints.max_discount")
    assert discount.value == 30.0  # periods/2026-11: 0.3, shown as a percentage
    assert discount.label == "Max discount (%)"
    assert "Largest allowed price cut" in discount.help
    captions = texts(at, "caption")
    assert "Allowed: at least 0%, below 100%" in captions  # the bounds next to the field
    assert "Allowed: 1 to 52" in captions  # forecast.horizon, in "Advanced settings"
    budget = at.number_input(key="cfg.optimize.constraints.markdown_budget")
    assert budget.value == 60000  # markets/US.yaml
    assert budget.label == "Markdown budget (market currency)"  # no sales data: no currency
    levels = at.multiselect(key="cfg.optimize.constraints.price_levels")
    assert levels.value == [-0.3, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1]
    with pytest.raises(KeyError):  # operator settings: configs/, not the form
        at.selectbox(key="cfg.execution.executor")
    with pytest.raises(KeyError):
        at.text_input(key="cfg.output.endpoint")
    assert [e.label for e in at.expander] == ["Advanced settings"]
    assert (
        "Market US settings (configs/markets/US.yaml)" in at.dataframe[0].value["Set by"].tolist()
    )


def test_an_invalid_combination_is_explained_inline_and_nothing_launches(app, local_root):
    at = app.run()
    for key in WEIGHTS:
        at.slider(key=key).set_value(0.0)
    at.run()
    errors = texts(at, "error")
    assert any("at least one of revenue, margin, volume" in e for e in errors), errors
    assert any("nothing has been launched" in e for e in errors)
    assert at.button(key="launch.go").disabled  # launch.launch re-checks anyway (test_launch)
    assert runs_written(local_root) == []


@pytest.mark.parametrize(
    ("key", "typed", "words"),
    [  # what people typed in the issue, in the form's units
        (
            "cfg.optimize.constraints.max_discount",
            500.0,
            "must be at least 0%, below 100%; it is 500%",
        ),
        ("cfg.optimize.constraints.max_discount", 100.0, "below 100%; it is 100%"),
        ("cfg.optimize.constraints.min_margin", -1.0, "at least 0%, below 100%; it is -1%"),
        ("cfg.optimize.constraints.markdown_budget", -5.0, "must be 0 to 10,000,000,000; it is -5"),
        ("cfg.optimize.constraints.max_changes", 99999, "must be 0 to 10,000; it is 99,999"),
        ("cfg.load_transform.history_weeks", 10, "must be 60 to 520; it is 10"),
        ("cfg.underperformers.decline_threshold", 0.0, "above 0%, at most 100%; it is 0%"),
        ("cfg.underperformers.peer_threshold", 0.0, "above 0, at most 2; it is 0"),
    ],
)
def test_an_out_of_range_value_is_explained_next_to_its_field_and_cannot_launch(
    app, local_root, key, typed, words
):
    at = app.run()
    at.number_input(key=key).set_value(typed).run()
    label = forms.field_spec(key.removeprefix("cfg.")).label
    errors = texts(at, "error")
    assert any(e.startswith(f"{label}: must be") and e.endswith(words) for e in errors), errors
    launch = at.button(key="launch.go")
    assert launch.disabled
    assert any("Launch is disabled until this is fixed" in e for e in texts(at, "error"))
    assert at.number_input(key=key).value == typed  # the box keeps what was typed
    assert runs_written(local_root) == []


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"load_transform.min_weeks_with_sales": 520}, "Min weeks with sales", "History weeks"),
        (
            {"underperformers.baseline_weeks": 104, "load_transform.history_weeks": 100},
            "Baseline weeks",
            "need more history",
        ),
        (
            {"forecast.backtest_weeks": 52, "load_transform.history_weeks": 100},
            "Season length",
            "backtest weeks",
        ),
        ({"optimize.constraints.max_changes": 0}, "Max changes", "no price could change"),
    ],
)
def test_settings_that_contradict_each_other_are_explained_before_launch(
    app, local_root, changes, key, words
):
    at = app.run()
    for setting, value in changes.items():
        at.number_input(key=f"cfg.{setting}").set_value(value)
    at.run()
    errors = texts(at, "error")
    assert any(e.startswith(f"{key}: ") and words in e for e in errors), errors
    assert at.button(key="launch.go").disabled
    assert runs_written(local_root) == []


def test_the_month_picker_offers_the_months_the_data_can_plan_and_starts_on_next_month(
    app, local_root
):
    import datetime as dt

    from toolkit.pricing import demo_data

    demo_data.write(["US"], n_products=12, root=local_root)  # sales through last week
    at = app.run()
    month = at.selectbox(key="launch.period")
    today = dt.date.today()
    following = dt.date(today.year + today.month // 12, today.month % 12 + 1, 1)
    assert month.value == following.strftime("%Y-%m")
    assert today.strftime("%Y-%m") in month.options
    cfg = forms.baseline(forms.Identity("US", month.value)).config.load_transform
    assert (
        month.options
        == periods.plannable(*demo_data_days(local_root), cfg.history_weeks, cfg.max_gap_weeks)[
            : len(month.options)
        ]
    )
    assert not at.warning


def demo_data_days(root):
    from toolkit.data import io, schemas

    sales = io.read(storage.raw_url("US", "sales", root), schemas.RawSales)
    return sales["date"].min(), sales["date"].max()


def test_choosing_another_market_loads_its_settings_and_shows_their_origin(app, local_root):
    at = app.run()
    at.slider(key="cfg.optimize.weights.margin").set_value(0.7).run()
    sources = at.dataframe[0].value
    assert "Changed in this form" in sources["Set by"].tolist()
    at.selectbox(key="launch.country").set_value("NO").run()
    expected = forms.values_of(forms.baseline(forms.Identity("NO", "2026-11")))
    budget = at.number_input(key="cfg.optimize.constraints.markdown_budget").value
    assert budget == expected["optimize.constraints.markdown_budget"]
    assert at.slider(key="cfg.optimize.weights.margin").value == 0.4  # back to NO's value
    assert any(s.startswith("Market NO settings") for s in at.dataframe[0].value["Set by"])


def test_the_form_survives_a_visit_to_another_page(app, local_root):
    at = app.run()
    at.slider(key="cfg.optimize.weights.volume").set_value(0.65).run()
    at.switch_page("views/runs.py").run()
    at.switch_page("views/launch.py").run()
    assert at.slider(key="cfg.optimize.weights.volume").value == 0.65


# ---------------------------------------------------------------------------
# Guards: sign-in, who may launch, where the app listens
# ---------------------------------------------------------------------------


def test_with_sign_in_configured_a_signed_out_person_sees_only_the_sign_in_page(local_root):
    at = new_app()
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception
    assert "Launch a run" not in [t.value for t in at.title]
    assert any("Sign in" in t for t in texts(at))
    for page in ("runs", "run_detail", "compare", "launch"):
        with pytest.raises(ValueError):
            at.switch_page(f"views/{page}.py")


@pytest.mark.parametrize("page", ["launch", "runs", "run_detail", "compare"])
def test_every_page_is_guarded_even_when_run_without_the_router(local_root, monkeypatch, page):
    from streamlit.testing.v1 import AppTest

    make_run(local_root, "run-a")
    monkeypatch.syspath_prepend(str(APP_MAIN.parent))  # `ui`, as the router provides it
    at = AppTest.from_file(str(APP_MAIN.parent / "views" / f"{page}.py"), default_timeout=90)
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Price recommendations"]
    assert not at.dataframe and not at.metric and not at.get("download_button")


def test_a_signed_in_viewer_may_look_but_not_launch(local_root):
    at = new_app()
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": True, "email": "viewer@example.com", "name": "Vera Viewer"}
    at.run()
    assert at.title[0].value == "Launch a run"
    assert at.button(key="launch.go").disabled
    assert any("ask an administrator" in t and "viewer@example.com" in t for t in texts(at))
    assert "Vera Viewer" in [t.value for t in at.sidebar.text]
    assert runs_written(local_root) == []


def test_a_listed_launcher_may_launch(local_root):
    at = new_app()
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": True, "email": "Boss@Example.com", "name": "Bo"}
    at.run()
    assert not at.button(key="launch.go").disabled
    assert "You may launch and cancel runs." in [c.value for c in at.sidebar.caption]


def test_without_sign_in_the_app_says_it_is_local_only(app, local_root):
    at = app.run()
    assert any("127.0.0.1" in i and "Local mode" in i for i in texts(at.sidebar, "info"))


def test_without_sign_in_the_app_refuses_to_serve_beyond_localhost(app, local_root):
    from streamlit import config as st_config

    st_config.set_option("server.address", "0.0.0.0")
    at = app.run()
    assert at.error and "refuses to show anything" in texts(at, "error")[0]
    assert not at.title and not at.button


# ---------------------------------------------------------------------------
# Results, runs and comparison of (fabricated) runs
# ---------------------------------------------------------------------------


def test_results_show_kpis_recommendations_charts_and_downloads(app, local_root):
    make_run(local_root, "run-a")
    at = open_page(app, "run_detail", run="run-a")
    labels = [shown(m.label) for m in at.metric]
    assert labels == [
        "Revenue change (USD)",
        "Margin change (USD)",
        "Volume change (units)",
        "Price changes",
        "Markdown spent (USD)",
    ]
    assert at.metric[3].value == "2"
    used = [shown(p.proto.text) for p in at.get("progress")]
    assert used[0] == "2 of 35 allowed"  # against Max changes (periods/2026-11)
    assert used[1].endswith("% of the 60,000 USD budget")  # markets/US.yaml
    # Pictures first: the overview tab holds the charts, the tables come after.
    assert [t.label for t in at.tabs][:3] == [
        ":material/insights: Overview",
        ":material/table: Recommendations",
        ":material/tune: Settings",
    ]
    assert len(at.tabs[0].get("vega_lite_chart")) == 3  # price changes, impact, forecast
    table = at.dataframe[0].value
    assert list(table["Product"]) and set(table["Changed"]) == {True}
    assert {"Current price", "Recommended price", "Change %"} <= set(table.columns)
    downloads = [d.label for d in at.get("download_button")]
    assert "Download this table (CSV)" in downloads
    assert "Download the delivery file (CSV)" in downloads
    at.toggle(key="detail.only_changes").set_value(False).run()
    assert len(at.dataframe[0].value) == 4


def test_product_names_are_shown_as_text_never_as_html(app, local_root):
    make_run(local_root, "run-xss", names=[XSS, "Nimbus Mug 2", XSS + " 3", "Harbor Vase 4"])
    at = open_page(app, "run_detail", run="run-xss")
    at.toggle(key="detail.only_changes").set_value(False).run()
    names = at.dataframe[0].value["Name"].tolist()
    assert XSS in names  # the literal string, as data
    options = at.selectbox(key="detail.product").options
    assert any(XSS in o for o in options)
    assert not at.get("html")
    for element in list(at.markdown) + list(at.caption):
        assert not element.proto.allow_html
        assert "<img" not in element.value.replace("\\<img", ""), element.value


def test_a_failed_step_shows_its_contract_report_as_a_table(app, local_root):
    make_run(local_root, "run-bad", failed_step="identify_underperformers")
    at = open_page(app, "run_detail", run="run-bad")
    assert texts(at, "error")[0] == (
        "The RawSales data broke 1 rule(s) in step Identify underperformers, for example "
        "column units: units sold are never negative (2 values). Correct the data and "
        "launch again."
    )
    report = at.dataframe[0].value
    assert report.loc[0, "Column"] == "units" and report.loc[0, "Failing"] == 2
    assert "-1, -5" in report.loc[0, "Examples"]


def test_files_outside_the_root_are_refused_on_the_results_page(app, local_root):
    make_run(local_root, "run-a")
    at = open_page(app, "run_detail", run="run-a", file="../../etc/passwd")
    assert any("refused" in e for e in texts(at, "error"))


def test_runs_page_lists_filters_and_follows_a_run(app, local_root):
    make_run(local_root, "run-a", launcher="ann@example.com")
    make_run(local_root, "run-bad", failed_step="forecast", launcher="bob@example.com")
    at = open_page(app, "runs", run="run-bad")
    table = at.dataframe[0].value
    assert set(table["Run"]) == {"run-a", "run-bad"}
    assert {"Status", "Market", "Period", "Launched by", "Started", "Duration"} <= set(table)
    shown = texts(at)
    for step in ("Load transform", "Identify underperformers", "Forecast", "Optimize"):
        assert any(f"**{step}**" in t for t in shown), step
    assert any("failed" in t.lower() for t in shown)
    at.multiselect(key="runs.status").set_value(["succeeded"]).run()
    assert list(at.dataframe[0].value["Run"]) == ["run-a"]


def test_rerun_prefills_the_launch_form(app, local_root):
    make_run(local_root, "run-a", patches=("optimize.weights.revenue=0.7", "forecast.horizon=8"))
    at = open_page(app, "runs", run="run-a")
    at.button(key="runs.rerun").click().run()
    assert at.title[0].value == "Launch a run"
    assert at.slider(key="cfg.optimize.weights.revenue").value == 0.7
    assert at.number_input(key="cfg.forecast.horizon").value == 8
    assert any("Prefilled with the settings of run run-a" in i for i in texts(at, "info"))
    assert runs_written(local_root) == ["run-a"]


def test_compare_shows_setting_differences_and_kpi_deltas(app, local_root):
    make_run(local_root, "run-a", patches=("optimize.weights.revenue=0.7",), price_change=-0.1)
    make_run(local_root, "run-b", patches=("optimize.weights.revenue=0.2",), price_change=-0.2)
    at = open_page(app, "compare", runs="run-a,run-b")
    assert at.multiselect(key="compare.runs").value == ["run-a", "run-b"]
    kpis, params = at.dataframe[0].value, at.dataframe[1].value
    delta = [c for c in kpis.columns if c.startswith("Δ")]
    # Runs named by what differs from the defaults, what was changed at launch first.
    assert delta == ["Δ US 2026-11 · Revenue weight 0.2, Max discount 30% +2 more"]
    revenue = kpis.set_index("KPI").loc["Revenue change"]
    a, b = (float(v.split()[0].replace(",", "")) for v in revenue.iloc[:2])
    assert revenue.iloc[0].endswith(" USD") and revenue[delta[0]] == f"{b - a:+,.0f} USD"
    row = params.set_index("Setting").loc["Objective weights: Revenue"]
    assert list(row.iloc[:2]) == ["0.7", "0.2"]
    assert not any("different currencies" in w for w in texts(at, "warning"))


def test_runs_are_told_apart_by_name_note_and_what_changed(app, local_root):
    from toolkit.pricing import demo_data
    from toolkit.runs import store as runs

    demo_data.write(["US"], n_products=12, root=local_root, as_of="2026-12-04")
    at = app.run()
    at.selectbox(key="launch.period").set_value("2026-11").run()
    at.number_input(key="cfg.optimize.constraints.max_discount").set_value(20.0)
    at.text_input(key="launch.name").set_value("Deeper cuts")
    at.text_area(key="launch.note").set_value("Does 20% beat 30%?")
    at.run()
    at.button(key="launch.go").click().run()
    run_id = at.session_state["launch.last"]
    record = runs.load(run_id, local_root)
    assert (record.name, record.note) == ("Deeper cuts", "Does 20% beat 30%?")
    assert at.text_input(key="launch.name").value == ""  # the next run gets its own
    make_run(local_root, "run-de", market="DE", currency="EUR", launcher="bob@example.com")

    at = open_page(new_app(), "runs", run=run_id)
    table = at.dataframe[0].value.set_index("Run")
    assert table.loc[run_id, "Name"] == "Deeper cuts"
    # What differs from the defaults, what was changed at launch first, money in its currency.
    assert table.loc[run_id, "What changed"].startswith(
        "Max discount 20%, Markdown budget 60,000 USD"
    )
    assert table.loc["run-de", "Name"] == ""
    assert "Deeper cuts (US 2026-11 · all categories)" in texts(at, "subheader")
    assert "Note: Does 20% beat 30%?" in texts(at, "caption")
    for key, value, expected in [
        ("runs.market", ["DE"], ["run-de"]),
        ("runs.launcher", ["bob@example.com"], ["run-de"]),
        ("runs.status", ["queued"], [run_id]),
    ]:
        at.multiselect(key=key).set_value(value).run()
        assert list(at.dataframe[0].value["Run"]) == expected, key
        at.multiselect(key=key).set_value([]).run()
    at.multiselect(key="runs.period").set_value(["2026-11"]).run()
    assert set(at.dataframe[0].value["Run"]) >= {"run-de"}


def test_compare_labels_runs_by_their_names(app, local_root):
    make_run(local_root, "run-a")
    make_run(local_root, "run-b", run_name="Deeper cuts", price_change=-0.2)
    at = open_page(app, "compare", runs="run-a,run-b")
    delta = [c for c in at.dataframe[0].value.columns if c.startswith("Δ")]
    assert delta == ["Δ US 2026-11 · Deeper cuts"]


def test_a_run_name_that_cannot_be_stored_refuses_the_launch(local_root):
    from logic import access, launch

    with pytest.raises(launch.LaunchRefused) as refused:
        launch.launch(
            forms.Identity("US", "2026-11"),
            {},
            access.Viewer.local_user(),
            name="x" * 81,
        )
    assert (
        str(refused.value)
        == "Run name: the run name is 81 characters; keep it to 80 (say more in the note)"
    )
    assert runs_written(local_root) == []


# ---------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------


def test_two_sessions_do_not_share_form_state(local_root):
    first, second = new_app().run(), new_app().run()
    first.slider(key="cfg.optimize.weights.revenue").set_value(0.9).run()
    second.run()
    assert first.slider(key="cfg.optimize.weights.revenue").value == 0.9
    assert second.slider(key="cfg.optimize.weights.revenue").value == 0.4
    assert first.session_state["launch.saved"] is not second.session_state["launch.saved"]


# ---------------------------------------------------------------------------
# What you see is what runs
# ---------------------------------------------------------------------------


def form_widget(at, spec):
    """The widget AppTest finds for a field, by its kind."""
    kinds = {
        "slider": at.slider,
        "int": at.number_input,
        "float": at.number_input,
        "float_list": at.multiselect,
        "choice": at.selectbox,
        "bool": at.checkbox,
        "text": at.text_input,
    }
    return kinds[spec.kind](key=f"cfg.{spec.key}")


def test_the_launched_run_gets_exactly_the_values_the_form_shows(app, local_root):
    """Launch from the form; the run's frozen effective config (what it executes with) must
    equal every field as shown, percentages converted back to fractions."""
    from toolkit.pricing import demo_data
    from toolkit.runs import store as runs

    demo_data.write(["US"], n_products=12, root=local_root, as_of="2026-12-04")
    at = app.run()
    at.selectbox(key="launch.period").set_value("2026-11").run()
    assert at.number_input(key="cfg.optimize.constraints.markdown_budget").label == (
        "Markdown budget (USD)"
    )
    typed = {
        "optimize.weights.revenue": 0.7,
        "optimize.constraints.max_discount": 20.0,  # percent
        "optimize.constraints.min_margin": 17.5,  # percent
        "optimize.constraints.markdown_budget": 12345.0,
        "optimize.constraints.max_changes": 7,
        "optimize.constraints.price_levels": [-0.15, -0.05, 0.0, 0.05],
        "forecast.horizon": 8,
        "underperformers.decline_threshold": 90.0,  # percent
    }
    for key, value in typed.items():
        form_widget(at, forms.field_spec(key)).set_value(value)
    at.run()
    assert not at.button(key="launch.go").disabled, texts(at, "error")
    shown_values = {
        spec.key: forms.from_widget(spec, form_widget(at, spec).value)
        for spec in forms.form_fields()
    }
    at.button(key="launch.go").click().run()
    record = runs.load(at.session_state["launch.last"], local_root)
    effective = forms.values_of(record.config)
    for key, value in shown_values.items():
        assert effective[key] == pytest.approx(value), key
    constraints = record.config["optimize"]["constraints"]
    assert (constraints["max_discount"], constraints["min_margin"]) == (0.2, 0.175)
    assert record.config["underperformers"]["decline_threshold"] == 0.9
    assert (record.market, record.period) == ("US", "2026-11")


# ---------------------------------------------------------------------------
# Every link works or says why not
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "query", "named"),
    [
        ("launch", {"from_run": "nope-123"}, "nope-123"),
        ("launch", {"from_run": "../../etc"}, "../../etc"),
        ("run_detail", {"run": "does-not-exist"}, "does-not-exist"),
        ("runs", {"run": "does-not-exist"}, "does-not-exist"),
        ("compare", {"runs": "run-a,nope-9"}, "nope-9"),
    ],
)
def test_a_bad_run_id_in_a_link_names_the_id_and_offers_the_way_back(
    app, local_root, page, query, named
):
    make_run(local_root, "run-a")
    make_run(local_root, "run-b")
    at = open_page(app, page, **query)
    errors = texts(at, "error")
    assert any(f"There is no run '{named}'" in e for e in errors), errors
    assert "See the latest runs" in [link.label for link in at.get("page_link")]
    assert not at.metric  # no other run's results in its place
    assert not any("run-b" in t or "run-a ·" in t for t in texts(at, "caption", "subheader"))
    for error in errors:
        assert local_root not in error  # no server path


def test_compare_of_a_bad_id_does_not_compare_other_runs(app, local_root):
    make_run(local_root, "run-a")
    make_run(local_root, "run-b")
    at = open_page(app, "compare", runs="run-a,nope-9")
    assert at.multiselect(key="compare.runs").value == ["run-a"]
    assert any("Pick at least two runs" in i for i in texts(at, "info"))
    assert not at.dataframe


# ---------------------------------------------------------------------------
# Money, cancels and the operator's view
# ---------------------------------------------------------------------------


def test_compare_of_two_markets_never_subtracts_different_currencies(app, local_root):
    make_run(local_root, "run-us", market="US", currency="USD")
    make_run(local_root, "run-de", market="DE", currency="EUR", price_change=-0.2)
    at = open_page(app, "compare", runs="run-us,run-de")
    kpis = at.dataframe[0].value.set_index("KPI")
    delta = next(c for c in kpis.columns if c.startswith("Δ"))
    assert kpis.loc["Revenue change", delta] == "not comparable (different currencies)"
    assert kpis.loc["Markdown spent", delta] == "not comparable (different currencies)"
    assert kpis.loc["Revenue change (%)", delta].endswith(" pts")
    assert kpis.loc["Revenue change"].iloc[0].endswith(" USD")
    assert kpis.loc["Revenue change"].iloc[1].endswith(" EUR")
    assert any("different currencies (US: USD, DE: EUR)" in w for w in texts(at, "warning"))
    assert len(at.get("vega_lite_chart")) == 3  # one scale per measure


def test_compare_defaults_to_runs_of_the_same_market_and_month(app, local_root):
    make_run(local_root, "run-us-1")
    make_run(local_root, "run-de", market="DE", currency="EUR")
    make_run(local_root, "run-us-2", patches=("optimize.weights.revenue=0.7",))
    at = app.run()
    at.switch_page("views/compare.py").run()
    assert sorted(at.multiselect(key="compare.runs").value) == ["run-us-1", "run-us-2"]


def test_a_cancel_reads_as_a_cancel(app, local_root):
    make_run(
        local_root, "run-c", status="cancelled", failed_step="forecast", launcher="ann@example.com"
    )
    at = open_page(app, "run_detail", run="run-c")
    assert not at.error, texts(at, "error")
    assert "This run was cancelled by ann@example.com; nothing was delivered." in texts(at, "info")


def test_a_cancel_shows_cancelling_until_the_run_is_recorded_cancelled(app, local_root):
    from toolkit import config as config_mod
    from toolkit.runs import queue
    from toolkit.runs import store as runs

    resolved = config_mod.resolve(patches=["country=US"])
    run_id = queue.submit(resolved, patches=["country=US"], launcher="boss@example.com").id
    at = open_page(app, "runs", run=run_id)
    at.button(key=f"cancel-runs-{run_id}").click().run()
    cancelling = [b for b in at.button if b.label == "Cancelling…"]
    assert cancelling and cancelling[0].disabled  # shown while the cancel is written
    assert not [b for b in at.button if b.label == "Cancel this run"]
    assert runs.load(run_id, local_root).status == "cancelled"
    at.run()  # the panel's next refresh reads the record
    assert not [b for b in at.button if b.label == "Cancelling…"]
    assert any(i.startswith("This run was cancelled by") for i in texts(at, "info"))


TRACEBACK = 'Traceback (most recent call last):\n  File "/srv/secret/toolkit/x.py", line 1'


def signed_in(email):
    at = new_app()
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": True, "email": email, "name": email}
    return at


def test_a_business_user_sees_a_failure_in_words_without_server_paths(local_root):
    make_run(
        local_root,
        "run-f",
        failed_step="forecast",
        error="ValueError: product 'P1' has 40 weeks, too few; see /srv/secret/store/x.parquet",
        traceback=TRACEBACK,
    )
    at = open_page(signed_in("viewer@example.com"), "run_detail", run="run-f")
    [error] = texts(at, "error")
    assert error.startswith("Step Forecast failed: ValueError: product 'P1' has 40 weeks")
    assert "x.parquet" in error and "/srv/secret" not in error
    assert "Lower Backtest weeks or Season length" in error
    everything = " ".join(texts(at) + texts(at.sidebar))
    assert "/srv/secret" not in everything and "Traceback" not in everything
    assert local_root not in everything  # not even the storage root
    assert [t.label for t in at.tabs] == [
        ":material/insights: Overview",
        ":material/table: Recommendations",
        ":material/tune: Settings",
    ]


@pytest.mark.parametrize("who", ["local", "listed operator"])
def test_operators_see_the_technical_layer(local_root, tmp_path, who):
    make_run(
        local_root, "run-f", failed_step="forecast", error="ValueError: x", traceback=TRACEBACK
    )
    if who == "local":
        at = new_app()
    else:
        (tmp_path / "app.yaml").write_text("launchers: []\noperators: [ops@example.com]\n")
        at = signed_in("ops@example.com")
    at = open_page(at, "run_detail", run="run-f")
    labels = [t.label for t in at.tabs]
    assert ":material/description: Steps & notebooks" in labels
    assert ":material/folder_open: Files" in labels
    assert "Step forecast: error and traceback (for operators)" in [e.label for e in at.expander]
    assert any(TRACEBACK in c for c in texts(at, "code"))
