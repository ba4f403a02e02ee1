"""Rendering helpers shared by the site's pages (``leaderboard.site``), and `build`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jinja2

DECIMALS = 1


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("leaderboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _display_uri(uri: str) -> str:
    # The page is meant to be published; a server uri may embed a password.
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def build(tracking_uri: str, out_dir: Path) -> Path:
    """Write the site (``leaderboard.site``) into ``out_dir``; return its index.html."""
    from leaderboard.site import build_site

    return build_site(tracking_uri, Path(out_dir))
