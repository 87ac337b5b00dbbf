"""Layered config: merging, provenance and every error path."""

from __future__ import annotations

import re
import shutil

import pytest
from helpers import PROJECT_DIR, toolkit, toolkit_env

from toolkit.config import ConfigError, load_yaml_text, parse_patch, resolve


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_layers_merge_in_order_with_provenance(project, tmp_path):
    extra = write(tmp_path / "extra.yaml", "optimize:\n  weights:\n    volume: 0.3\n")
    resolved = resolve(
        patches=["country=DE", "optimize.weights.margin=0.8"],
        configs=[extra],
        project_dir=project,
    )
    cfg = resolved.config
    assert cfg.country == "DE"
    assert cfg.optimize.weights.margin == 0.8
    assert cfg.optimize.weights.volume == 0.3
    assert cfg.optimize.constraints.min_margin == 0.2  # markets/DE.yaml
    assert cfg.optimize.constraints.max_changes == 35  # periods/2026-11.yaml
    assert resolved.origin("optimize.weights.margin") == "--patch optimize.weights.margin=0.8"
    assert resolved.origin("optimize.weights.volume") == extra
    assert resolved.origin("optimize.weights.revenue") == "configs/defaults.yaml"
    assert resolved.origin("optimize.constraints.min_margin") == "configs/markets/DE.yaml"
    assert resolved.origin("optimize.constraints.max_changes") == "configs/periods/2026-11.yaml"
    assert resolved.origin("country") == "--patch country=DE"


def test_lists_replace_and_mappings_merge(project):
    resolved = resolve(
        patches=["optimize.constraints.price_levels=[-0.1, 0.0]"], project_dir=project
    )
    assert resolved.config.optimize.constraints.price_levels == [-0.1, 0.0]
    assert resolved.config.optimize.constraints.max_discount == 0.3  # sibling kept


def test_category_overlay_applies_only_when_chosen(project):
    assert resolve(project_dir=project).config.optimize.constraints.min_margin == 0.15
    chosen = resolve(patches=["category=electronics"], project_dir=project)
    assert chosen.config.optimize.constraints.min_margin == 0.1
    assert chosen.origin("optimize.constraints.min_margin") == "configs/categories/electronics.yaml"


def test_norway_stays_a_string_everywhere(project):
    assert resolve(country="NO", project_dir=project).config.country == "NO"
    assert resolve(patches=["country=NO"], project_dir=project).config.country == "NO"
    write(project / "env.yaml", "country: NO\nperiod: 2026-11\n")  # unquoted, YAML 1.1 traps
    cfg = resolve(project_dir=project).config
    assert (cfg.country, cfg.period) == ("NO", "2026-11")
    assert cfg.optimize.constraints.markdown_budget == 400_000  # markets/NO.yaml applied


def test_yaml_scalars_follow_yaml_1_2():
    data = load_yaml_text("a: NO\nb: 2024-01\nc: 012\nd: yes\ne: 2024-01-01\nf: true\n", "t")
    assert data == {"a": "NO", "b": "2024-01", "c": 12, "d": "yes", "e": "2024-01-01", "f": True}


def test_unknown_key_in_overlay_suggests_closest(project):
    write(project / "configs/markets/US.yaml", "optimize:\n  weigths:\n    margin: 0.5\n")
    with pytest.raises(ConfigError) as err:
        resolve(project_dir=project)
    message = str(err.value)
    assert "configs/markets/US.yaml" in message
    assert "optimize.weigths" in message
    assert "did you mean 'optimize.weights'" in message


def test_unknown_key_in_patch_suggests_closest(project):
    with pytest.raises(ConfigError) as err:
        resolve(patches=["forecast.horizn=4"], project_dir=project)
    assert "--patch forecast.horizn=4" in str(err.value)
    assert "did you mean 'forecast.horizon'" in str(err.value)


def test_bad_yaml_names_file_line_and_column(project):
    write(project / "configs/defaults.yaml", "forecast:\n  horizon: 12\n bad: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        resolve(project_dir=project)
    message = str(err.value)
    assert "configs/defaults.yaml" in message
    assert "line 3" in message and "column" in message


def test_out_of_range_weight_names_the_layer(project, tmp_path):
    overlay = write(tmp_path / "bad.yaml", "optimize:\n  weights:\n    margin: 1.5\n")
    with pytest.raises(ConfigError) as err:
        resolve(configs=[overlay], project_dir=project)
    message = str(err.value)
    assert overlay in message and "optimize.weights.margin" in message
    assert "less than or equal to 1" in message and "1.5" in message


def test_out_of_range_patch(project):
    with pytest.raises(
        ConfigError, match=r"--patch optimize.constraints.max_discount=2.*max_discount"
    ):
        resolve(patches=["optimize.constraints.max_discount=2"], project_dir=project)


def test_unknown_market_lists_known_ones(project):
    with pytest.raises(ConfigError, match=r"unknown market 'XX'.*known: DE, FR, GB, NO, SE, US"):
        resolve(patches=["country=XX"], project_dir=project)


def test_overlay_cannot_change_identity(project):
    write(project / "configs/markets/US.yaml", "country: DE\n")
    with pytest.raises(ConfigError, match="overlays cannot change the run identity"):
        resolve(project_dir=project)


@pytest.mark.parametrize(
    "patch, message",
    [
        ("country", "expected key.path=value"),
        ("Country=US", "lowercase identifiers"),
        ("a\nb=1", "lowercase identifiers"),
        ("optimize.weights={margin: 1}", "scalar or a list"),
    ],
)
def test_malformed_patches(patch, message):
    with pytest.raises(ConfigError, match=message):
        parse_patch(patch)


def test_patch_values_are_plain_data(project):
    value = "x'; import os; os.system('id') #\u2028"
    with pytest.raises(ConfigError, match="output.endpoint"):
        resolve(patches=[f"output.endpoint={value}"], project_dir=project)
    assert parse_patch("output.endpoint='http://h/q?a=\"b\"'") == {
        "output": {"endpoint": 'http://h/q?a="b"'}
    }


def test_python_tags_aliases_and_huge_files_are_refused(project, tmp_path):
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        load_yaml_text("a: !!python/object/apply:os.system ['id']\n", "evil.yaml")
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    with pytest.raises(ConfigError, match="aliases"):
        load_yaml_text(bomb, "bomb.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 10_000_000)
    with pytest.raises(ConfigError, match="larger than"):
        resolve(configs=[str(big)], project_dir=project)


def test_missing_config_url_is_named(project, tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        resolve(configs=[str(tmp_path / "nope.yaml")], project_dir=project)


def test_config_from_s3(project, s3_root):
    from toolkit.data import storage

    url = storage.join(s3_root, "configs/DE-2026-11.yaml")
    storage.write_bytes(url, b"optimize:\n  weights:\n    margin: 0.9\n")
    resolved = resolve(configs=[url], patches=["country=DE"], project_dir=project)
    assert resolved.config.optimize.weights.margin == 0.9
    assert resolved.origin("optimize.weights.margin") == url


def test_every_field_has_a_description():
    from pydantic import BaseModel

    from toolkit.config import ToolkitConfig

    def walk(model):
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation)
            else:
                assert info.description, f"{model.__name__}.{name} has no description"

    walk(ToolkitConfig)


@pytest.mark.parametrize(
    "patch, message",
    [
        ("country=../../pipeline", "two-letter market code"),
        ("period=2026-13", "month as YYYY-MM"),
        ("category=../markets/US", "lowercase category name"),
    ],
)
def test_identity_values_never_become_paths(project, patch, message):
    with pytest.raises(ConfigError, match=message):
        resolve(patches=[patch], project_dir=project)


def test_duplicate_keys_name_the_key_and_both_lines(project, tmp_path):
    layer = tmp_path / "dup.yaml"
    layer.write_text("optimize:\n  weights:\n    margin: 1\n  weights:\n    margin: 2\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'weights' \(lines 2 and 4\)") as err:
        resolve(configs=[str(layer)], patches=["country=US"])
    assert str(layer) in str(err.value)


@pytest.mark.parametrize("depth", [33, 5000])
def test_deep_nesting_is_one_line_not_a_recursion_error(depth):
    text = "[" * depth + "]" * depth
    with pytest.raises(ConfigError, match="nested deeper than 32 levels") as err:
        load_yaml_text(text, "deep.yaml")
    assert len(str(err.value).splitlines()) == 2
    with pytest.raises(ConfigError, match="nested deeper than 32 levels"):
        parse_patch(f"optimize.weights={text}")


@pytest.mark.parametrize("period", ["２０２６-１１", "٢٠٢٦-١١", "2026-1１"])
def test_periods_in_other_digits_are_refused(project, period):
    with pytest.raises(ConfigError, match=r"period: must be a month as YYYY-MM"):
        resolve(patches=["country=US", f"period={period}"])


def test_duplicate_keys_in_project_layers_and_env_yaml_are_named(project):
    market = project / "configs" / "markets" / "US.yaml"
    market.write_text(market.read_text() + "optimize:\n  weights:\n    margin: 0.9\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'optimize' \(lines 2 and \d+\)") as err:
        resolve(patches=["country=US"], project_dir=project)
    assert "configs/markets/US.yaml: YAML error" in str(err.value)

    env = project / "env.yaml"
    env.write_text('country: "US"\nperiod: "2026-11"\ncountry: "DE"\n')
    with pytest.raises(ConfigError, match=r"duplicate key 'country' \(lines 1 and 3\)") as err:
        resolve(project_dir=project)
    assert f"{env}: YAML error" in str(err.value)


def test_an_unhashable_key_is_a_yaml_error_not_a_type_error():
    with pytest.raises(ConfigError, match=r"bad\.yaml: YAML error at line 1.*unhashable key"):
        load_yaml_text("? [a, b]\n: 1\n", "bad.yaml")


def test_a_long_patch_is_shown_by_its_start():
    with pytest.raises(ConfigError) as err:
        parse_patch("optimize.weights=" + "[" * 5000 + "]" * 5000)
    (problem,) = str(err.value).splitlines()[1:]
    assert problem.startswith("  - --patch 'optimize.weights=[[[") and len(problem) < 200
    assert problem.endswith("nested deeper than 32 levels")


@pytest.mark.parametrize("country", ["ＵS", "ＵＳ", "US\n"])
def test_market_codes_are_ascii_capitals_in_full(project, country):
    with pytest.raises(ConfigError, match="country: must be a two-letter market code"):
        resolve(country=country, project_dir=project)


def test_a_period_from_ploomber_env_in_other_digits_is_refused(project):
    with pytest.raises(ConfigError, match=r"period: must be a month as YYYY-MM \(got '٢٠٢٦-١١'\)"):
        resolve(country="US", period="٢٠٢٦-١١", project_dir=project)


def deep_patch() -> str:
    return "optimize.weights=" + "[" * 3000 + "]" * 3000


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--config", "{dup}"],
            r"{dup}: YAML error at line 4, column 3: duplicate key 'weights' \(lines 2 and 4\)",
        ),
        (
            ["--patch", deep_patch()],
            r"--patch 'optimize\.weights=\[+\.\.\.': "
            r"YAML error at line 1, column \d+: nested deeper than 32 levels",
        ),
        (
            ["--patch", "period=２０２６-１１"],
            r"--patch period=２０２６-１１: "
            r"period: must be a month as YYYY-MM \(got '２０２６-１１'\)",
        ),
    ],
    ids=["duplicate-key", "deep-patch", "full-width-period"],
)
def test_bad_config_is_a_short_error_from_the_command(args, message, local_root, tmp_path):
    dup = write(
        tmp_path / "dup.yaml", "optimize:\n  weights:\n    margin: 1\n  weights:\n    margin: 2\n"
    )
    args = [arg.replace("{dup}", dup) for arg in args]
    result = toolkit(["run", *args], toolkit_env(local_root), check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "invalid configuration:" and len(lines) == 2
    assert re.fullmatch(r"  - " + message.replace("{dup}", re.escape(dup)), lines[1]), lines[1]


def test_a_duplicate_key_in_env_yaml_is_a_short_error_from_the_command(project, local_root):
    shutil.copy(PROJECT_DIR / "pipeline.yaml", project / "pipeline.yaml")
    (project / "env.yaml").write_text('country: "US"\ncountry: "DE"\n')
    result = toolkit(["config", "show"], toolkit_env(local_root), cwd=project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    where = f"{project / 'env.yaml'}: YAML error at line 2, column 1"
    assert f"{where}: duplicate key 'country' (lines 1 and 2)" in result.stderr
