"""``clserve``: run the service (uvicorn) on the embedded default or, with CL_REDIS_URL, in distributed mode."""

from __future__ import annotations

import copy
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import typer
import uvicorn
from uvicorn.config import LOGGING_CONFIG

from service.app import create_app
from service.gc_tuning import tune_for_serving
from service.observability import DropQueryString
from service.settings import Settings
from worker.audit import install_handler as install_audit_handler

app = typer.Typer(add_completion=False)


def log_config() -> dict[str, Any]:
    """uvicorn's default logging configuration, its access lines without query strings (`DropQueryString`)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["drop_query_string"] = {"()": f"{DropQueryString.__module__}.DropQueryString"}
    config["loggers"]["uvicorn.access"]["filters"] = ["drop_query_string"]
    return config


@app.command()
def main(
    host: str | None = typer.Option(None, help="address to listen on (default 127.0.0.1, or CL_HOST)"),
    port: int | None = typer.Option(None, help="port (default 8000, or CL_PORT)"),
    data_dir: Path | None = typer.Option(None, help="directory of the embedded store (or CL_DATA_DIR)"),
    demo: bool = typer.Option(False, help="create and train the 'digits' model (MNIST digits 0-4), then serve it"),
    insecure: bool = typer.Option(False, help="allow a non-loopback address without API keys"),
    log_level: str = typer.Option("info", help="debug, info, warning, error"),
) -> None:
    """Serve models that keep learning from the data their users post."""
    overrides: dict[str, object] = {}
    for key, value in (("host", host), ("port", port), ("data_dir", data_dir)):
        if value is not None:
            overrides[key] = value
    if insecure:
        overrides["insecure"] = True
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if not settings.is_loopback() and not settings.api_keys and not settings.insecure:
        typer.echo(
            f"refusing to listen on {settings.host} without API keys: set CL_API_KEYS or pass --insecure", err=True
        )
        raise typer.Exit(2)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_audit_handler(sys.stdout)  # one JSON object per line, for log shippers
    on_started = (lambda: tune_for_serving(settings.gc_young_threshold)) if settings.gc_freeze else None
    config = uvicorn.Config(
        create_app(settings, on_started=on_started),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        log_config=log_config(),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    server = uvicorn.Server(config)
    if demo:
        from service.demo import run_demo

        threading.Thread(target=run_demo, args=(server, settings), name="demo", daemon=True).start()
    server.run()


if __name__ == "__main__":
    app()
