"""Who may do what in the app: everyone signed in may view, listed people may launch,
listed operators see the technical layer (files, logs, notebooks, tracebacks).

The lists live in ``configs/app.yaml`` (``TOOLKIT_APP_CONFIG`` points elsewhere),
read with the same safe YAML loader as every other config. Without sign-in configured
the app is a single-user tool on this computer (it only listens on 127.0.0.1), and the
person at the keyboard may launch and is the operator.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from toolkit import config as config_mod
from toolkit import project

__all__ = [
    "AccessDenied",
    "AppSettings",
    "Decision",
    "Viewer",
    "can_launch",
    "is_operator",
    "load_settings",
    "require_launch",
    "settings_path",
    "viewer_from_claims",
    "viewer_from_header",
]

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_HOST = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9a-fA-F:]+\]?$")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class AccessDenied(PermissionError):
    """The person may view but not launch or cancel runs."""


class AppSettings(BaseModel):
    """``configs/app.yaml``: settings of the app that are not pipeline settings."""

    model_config = ConfigDict(extra="forbid")

    launchers: list[str] = Field(
        default_factory=list,
        description="Emails of the people who may launch and cancel runs when sign-in is "
        "configured; everyone who signs in may view runs and results.",
    )

    operators: list[str] = Field(
        default_factory=list,
        description="Emails of the people who see runs' technical details (files, logs, "
        "notebooks, tracebacks) when sign-in is configured; without sign-in the person "
        "at this computer does.",
    )
    identity_header: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="Sign-in by a proxy on this computer: the name of the HTTP header in "
        "which an authenticating proxy in front of the app (e.g. oauth2-proxy's "
        "X-Forwarded-Email) sends the signed-in person's email. The app still listens on "
        "127.0.0.1 only, so nobody can reach it without the proxy and forge the header.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost"],
        min_length=1,
        description="Host names the app answers to (the Host header of every request and "
        "websocket handshake; *.example.com for subdomains). Add the proxy's public name "
        "when the app runs behind one; anything else is refused, which stops DNS rebinding.",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        bad = [h for h in value if not _HOST.match(str(h))]
        if bad:
            raise ValueError(
                f"not host names: {bad}; expected names such as localhost, 127.0.0.1 or "
                "*.example.com, without scheme or port"
            )
        return [str(h).strip().lower() for h in value]

    @field_validator("launchers", "operators")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not _EMAIL.match(str(v))]
        if bad:
            raise ValueError(f"not email addresses: {bad}")
        return sorted({str(v).strip().lower() for v in value})


def settings_path(project_dir: Path | str | None = None) -> Path:
    project_dir = project.resolve(project_dir)
    override = os.environ.get("TOOLKIT_APP_CONFIG", "").strip()
    return Path(override) if override else Path(project_dir) / "configs" / "app.yaml"


def load_settings(path: Path | str | None = None) -> AppSettings:
    """The app settings; a missing file means nobody is on the launch allow-list.

    Raises:
        ConfigError: the file is not valid YAML or does not match ``AppSettings``.
    """
    path = Path(path) if path else settings_path()
    if not path.exists():
        return AppSettings()
    data = config_mod.load_yaml_text(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(data, dict):
        raise config_mod.ConfigError(
            [config_mod.Problem(str(path), "", "expected a mapping of keys")]
        )
    try:
        return AppSettings.model_validate(data)
    except ValidationError as exc:
        raise config_mod.ConfigError(
            [
                config_mod.Problem(
                    str(path),
                    ".".join(str(p) for p in e["loc"]),
                    e["msg"].removeprefix("Value error, "),
                )
                for e in exc.errors()
            ]
        ) from None


@dataclass(frozen=True)
class Viewer:
    """The person using the app."""

    name: str
    email: str | None = None
    authenticated: bool = False  # signed in through the identity provider
    local: bool = False  # no sign-in configured: the person at this computer
    email_verified: bool | None = None

    @classmethod
    def local_user(cls) -> Viewer:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = "local user"
        return cls(name=name, local=True)

    @property
    def launcher(self) -> str:
        """What runs record as their launcher (``TOOLKIT_LAUNCHER``)."""
        text = self.email or self.name
        return re.sub(r"[\x00-\x1f\x7f]", "", text)[:200] or "unknown"


def viewer_from_claims(claims: Mapping[str, Any], auth_configured: bool) -> Viewer | None:
    """The viewer from ``st.user`` claims; None when sign-in is configured and missing."""
    if not auth_configured:
        return Viewer.local_user()
    if not claims.get("is_logged_in"):
        return None
    email = claims.get("email")
    email = str(email).strip() if email else None
    name = str(claims.get("name") or email or "signed-in user")
    verified = claims.get("email_verified")
    return Viewer(
        name=name,
        email=email,
        authenticated=True,
        email_verified=None if verified is None else bool(verified),
    )


def viewer_from_header(value: str | None) -> Viewer | None:
    """The viewer a sign-in proxy names in its header (an email); None without one."""
    email = str(value or "").strip()
    if not _EMAIL.match(email):
        return None
    return Viewer(name=email, email=email, authenticated=True)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def can_launch(viewer: Viewer | None, settings: AppSettings) -> Decision:
    """May ``viewer`` launch and cancel runs?"""
    if viewer is None:
        return Decision(False, "Sign in to use the app.")
    if viewer.local:
        return Decision(
            True,
            "No sign-in is configured, so the app only listens on this computer "
            "(127.0.0.1) and whoever uses it here may launch runs.",
        )
    if not viewer.authenticated:
        return Decision(False, "Sign in to launch runs.")
    if viewer.email_verified is False:
        return Decision(False, "Your email address is not verified by the sign-in provider.")
    if viewer.email and viewer.email.lower() in settings.launchers:
        return Decision(True, f"{viewer.email} is on the launch list.")
    who = viewer.email or viewer.name
    return Decision(
        False,
        f"You can view runs and results. To launch runs, ask an administrator to add "
        f"{who} to `launchers` in configs/app.yaml.",
    )


def is_operator(viewer: Viewer | None, settings: AppSettings) -> bool:
    """May ``viewer`` see runs' technical details? The local user, or a listed operator."""
    if viewer is None:
        return False
    if viewer.local:
        return True
    return bool(
        viewer.authenticated
        and viewer.email_verified is not False
        and viewer.email
        and viewer.email.lower() in settings.operators
    )


def require_launch(viewer: Viewer | None, settings: AppSettings) -> None:
    """Raise ``AccessDenied`` unless ``viewer`` may launch."""
    decision = can_launch(viewer, settings)
    if not decision.allowed:
        raise AccessDenied(decision.reason)
