"""`/console`: the tenant's console in the browser, served by the edge."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    """Its session check (call right after the API's key check) and its pages."""
    from api.console import access, deliveries, provisioning, work  # noqa: F401  (their routes)
    from api.console.blueprint import bp
    from api.console.blueprint import register as register_hooks

    register_hooks(app)
    app.register_blueprint(bp)
