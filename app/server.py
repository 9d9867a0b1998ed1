"""The server: the REST API and the Gradio pages mounted on one FastAPI application, with the request-body and rate
limits, Gradio's own upload check turned on, and the staff page behind its login (`app/main.py` calls it on the models
it loaded; `uvicorn app.main:app` serves the result)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import gradio as gr
from fastapi import FastAPI

from app.api import create_api
from app.api_common import Services
from app.pages import PageHandlers, build_demo
from app.security import RateLimit, StaffKeys, TokenBuckets

__all__ = ["MAX_UPLOAD_BYTES", "create_server", "mount"]

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per file; Gradio refuses larger uploads before they reach the models


def mount(api: FastAPI, demo: gr.Blocks, path: str, allowed_paths: list[str], **kwargs) -> FastAPI:
    """`gr.mount_gradio_app` with Gradio's own upload check on: it only runs for Blocks marked as launched, which
    `launch()` does and mounting does not, so without this any server file could be named as a file input."""
    app = gr.mount_gradio_app(api, demo, path=path, allowed_paths=allowed_paths, max_file_size=MAX_UPLOAD_BYTES, **kwargs)
    demo.has_launched = True
    return app


def create_server(
    services: Services,
    pages: PageHandlers,
    settings: argparse.Namespace,
    staff_keys: StaffKeys,
    staff_login: Callable[[str, str], bool],
    allowed_paths: list[str],
) -> tuple[FastAPI, gr.Blocks, gr.Blocks | None]:
    """One FastAPI application: the REST API over `services` under /api/v1, the staff page at /staff/ (with keys,
    behind `staff_login`) and the visitors' page at / ("demo" mode without keys). -> (app, public page, staff page)."""
    limit = int(settings.max_request_mb * 2**20)
    api = create_api(services, max_request_bytes=limit)
    # bursts of two minutes' worth: 8 clients x 25 calls of bench/bench_app_load.py, one address, pass
    buckets = TokenBuckets(settings.rate_limit, max(1, int(2 * settings.rate_limit))) if settings.rate_limit > 0 else None
    api.add_middleware(RateLimit, buckets=buckets, staff=staff_keys)
    # Requests of each kind run settings.concurrency at a time (Gradio's default is 1); the REST API and every page
    # share `services.work`, which bounds the model work of all of them together.
    public = build_demo("public" if staff_keys.enabled else "demo", pages).queue(default_concurrency_limit=settings.concurrency)
    staff_page = None
    if staff_keys.enabled:
        staff_page = build_demo("staff", pages).queue(default_concurrency_limit=settings.concurrency)
        api = mount(
            api,
            staff_page,
            "/staff",
            allowed_paths,
            auth=staff_login,
            auth_message="petmatch staff: any user name, a staff key as the password.",
        )
    return mount(api, public, "/", allowed_paths), public, staff_page
