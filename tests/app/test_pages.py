"""Every page through Streamlit's AppTest: the form, guards, results, runs and comparison.

Results come from fabricated runs (contract-valid outputs and a record) so these tests take
seconds; test_real_runs.py launches real runs."""

from __future__ import annotations

import pytest
from apphelpers import APP_MAIN, XSS, make_run, new_app, texts
from logic import forms

from toolkit.data import storage

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
    assert (discount.min, discount.max, discount.value) == (0.0, 1.0, 0.3)  # periods/2026-11
    assert "Largest allowed price cut" in discount.help
    budget = at.number_input(key="cfg.optimize.constraints.markdown_budget")
    assert budget.value == 60000  # markets/US.yaml
    levels = at.multiselect(key="cfg.optimize.constraints.price_levels")
    assert levels.value == [-0.3, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1]
    horizon = at.number_input(key="cfg.forecast.horizon")  # in "Advanced settings"
    assert (horizon.min, horizon.max) == (1, 52)
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
    ("key", "value", "words"),
    [
        ("cfg.underperformers.decline_threshold", 0.0, "greater than 0"),
        ("cfg.optimize.constraints.max_discount", 1.0, "less than 1"),
        ("cfg.underperformers.peer_threshold", 0.0, "greater than 0"),
    ],
)
def test_an_out_of_range_value_is_explained_next_to_its_field(app, local_root, key, value, words):
    at = app.run()
    widget = at.number_input(key=key)
    widget.set_value(value).run()
    errors = texts(at, "error")
    label = forms.field_spec(key.removeprefix("cfg.")).label
    assert any(label in e and words in e for e in errors), errors
    assert at.button(key="launch.go").disabled
    assert runs_written(local_root) == []


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
    labels = [m.label for m in at.metric]
    assert labels[:4] == [
        "Revenue change, USD",
        "Margin change, USD",
        "Volume change, units",
        "Price changes",
    ]
    assert at.metric[3].value == "2"
    table = at.dataframe[0].value
    assert list(table["Product"]) and set(table["Changed"]) == {True}
    assert {"Current price", "Recommended price", "Change %"} <= set(table.columns)
    assert len(at.get("vega_lite_chart")) == 2  # history + forecast, impact by category
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
    assert any("identify_underperformers failed" in e for e in texts(at, "error"))
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
        assert step in shown
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
    assert len(delta) == 1
    revenue = kpis.set_index("KPI").loc["Revenue change"]
    assert revenue[delta[0]] == pytest.approx(revenue.iloc[1] - revenue.iloc[0], abs=0.01)
    row = params.set_index("Setting").loc["Objective weights: Revenue"]
    assert list(row.iloc[:2]) == ["0.7", "0.2"]


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
