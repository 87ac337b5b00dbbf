"""Who may launch: the allow-list in configs/app.yaml, typed; viewers only view."""

from __future__ import annotations

import pytest
from logic import access, forms, launch

from toolkit import config as config_mod
from toolkit import project
from toolkit.data import storage

US = forms.Identity("US", "2026-11")


def test_the_project_settings_file_is_valid():
    settings = access.load_settings(project.root() / "configs" / "app.yaml")
    assert isinstance(settings.launchers, list)


def test_settings_are_typed_and_normalised(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("launchers: [Boss@Example.com, boss@example.com, ann@example.org]\n")
    assert access.load_settings(path).launchers == ["ann@example.org", "boss@example.com"]
    path.write_text("launchers: [not-an-email]\n")
    with pytest.raises(config_mod.ConfigError, match="not email addresses"):
        access.load_settings(path)
    path.write_text("launcher: [a@b.co]\n")  # a typo is an error, not an empty list
    with pytest.raises(config_mod.ConfigError, match="launcher"):
        access.load_settings(path)
    assert access.load_settings(tmp_path / "missing.yaml").launchers == []


def signed_in(email, verified=None):
    claims = {"is_logged_in": True, "email": email, "name": "Someone"}
    if verified is not None:
        claims["email_verified"] = verified
    return access.viewer_from_claims(claims, auth_configured=True)


def test_only_listed_verified_people_may_launch():
    settings = access.AppSettings(launchers=["boss@example.com"])
    assert access.can_launch(signed_in("BOSS@example.com"), settings).allowed
    viewer = access.can_launch(signed_in("viewer@example.com"), settings)
    assert not viewer.allowed and "configs/app.yaml" in viewer.reason
    assert not access.can_launch(signed_in("boss@example.com", verified=False), settings).allowed
    assert not access.can_launch(None, settings).allowed


def test_signed_out_means_no_viewer_when_sign_in_is_configured():
    assert access.viewer_from_claims({"is_logged_in": False}, auth_configured=True) is None
    assert access.viewer_from_claims({}, auth_configured=True) is None


def test_without_sign_in_the_local_user_may_launch():
    viewer = access.viewer_from_claims({"email": "ignored@example.com"}, auth_configured=False)
    assert viewer.local and viewer.email is None
    assert access.can_launch(viewer, access.AppSettings()).allowed


def test_launcher_names_are_single_line():
    viewer = access.Viewer(name="evil\nname\x00", email=None, authenticated=True)
    assert viewer.launcher == "evilname"


def test_a_viewer_cannot_launch_or_cancel_and_nothing_is_written(local_root):
    settings = access.AppSettings(launchers=["boss@example.com"])
    values = forms.values_of(forms.baseline(US))
    with pytest.raises(access.AccessDenied):
        launch.launch(US, values, signed_in("viewer@example.com"), settings)
    with pytest.raises(access.AccessDenied):
        launch.cancel("some-run", signed_in("viewer@example.com"), settings)
    assert storage.listdir(storage.join(local_root, "runs")) == []


def test_operators_are_the_local_user_or_listed_and_verified(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("operators: [Ops@Example.com]\n")
    settings = access.load_settings(path)
    assert access.is_operator(access.Viewer.local_user(), settings)
    ops = access.Viewer("Ops", "ops@example.com", authenticated=True)
    assert access.is_operator(ops, settings)
    unverified = access.Viewer("Ops", "ops@example.com", authenticated=True, email_verified=False)
    assert not access.is_operator(unverified, settings)
    viewer = access.Viewer("Vera", "vera@example.com", authenticated=True)
    assert not access.is_operator(viewer, settings)
    assert not access.is_operator(None, settings)


def test_allowed_hosts_default_to_loopback_and_are_checked(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("launchers: []\n")
    assert access.load_settings(path).allowed_hosts == ["127.0.0.1", "localhost"]
    path.write_text("allowed_hosts: [prices.example.com, '*.example.org', localhost]\n")
    assert access.load_settings(path).allowed_hosts[1] == "*.example.org"
    for bad in ("http://x.example.com", "x.example.com:8501", "[]"):
        path.write_text(f"allowed_hosts: [{bad!r}]\n" if bad != "[]" else "allowed_hosts: []\n")
        with pytest.raises(config_mod.ConfigError, match="allowed_hosts"):
            access.load_settings(path)


def test_a_sign_in_proxy_names_the_viewer_by_email_and_nothing_else():
    viewer = access.viewer_from_header(" Ann@Example.com ")
    assert viewer is not None and viewer.authenticated and viewer.email == "Ann@Example.com"
    settings = access.AppSettings(operators=["ops@example.com"], launchers=["ann@example.com"])
    assert access.can_launch(viewer, settings).allowed and not access.is_operator(viewer, settings)
    for missing in (None, "", "not an email", "a@b"):
        assert access.viewer_from_header(missing) is None
    with pytest.raises(ValueError):
        access.AppSettings(identity_header="X-Email: evil")
