"""The app's settings: command-line flags whose defaults come from environment variables (`app/main.py` reads them;
`app/loading.py` adds the models' flags), and the app's log line."""

from __future__ import annotations

import argparse
import os

from app.api import MAX_REQUEST_BYTES
from app.loading import model_flags

__all__ = ["log", "parse_settings"]


def _env_option(parser: argparse.ArgumentParser, flag: str, env: str, default, kind, help: str) -> None:
    """A flag whose default comes from `env`, then from `default`; the help names both."""
    parser.add_argument(
        flag, type=kind, default=kind(os.environ.get(env, str(default))), help=f"{help} (env {env}; default {default})"
    )


def parse_settings(argv: list[str] | None = None) -> argparse.Namespace:
    """The app's settings from `argv` (none: the environment and the defaults only)."""
    parser = model_flags(argparse.ArgumentParser(description="petmatch Gradio app"))
    # a Space sets GRADIO_SERVER_NAME=0.0.0.0; elsewhere the app listens on this machine only
    parser.add_argument("--host", default=os.environ.get("PETMATCH_HOST", os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PETMATCH_PORT", "7860")))
    # 4, not 8: concurrent requests share backbone passes anyway, and with the 224 px embedder 8 threads grew the
    # process by 430-470 MB under load (glibc heaps per thread) where 4 stay within the bound (bench/README.md)
    _env_option(
        parser, "--concurrency", "PETMATCH_CONCURRENCY", 4, int,
        "requests of each kind (compare, identify, register, search) run at once; more wait in Gradio's queue",
    )  # fmt: skip
    _env_option(
        parser, "--max-batch-size", "PETMATCH_MAX_BATCH_SIZE", 32, int,
        "photos of concurrent requests embedded in one backbone pass at most; 0 = each request runs its own pass",
    )  # fmt: skip
    parser.add_argument(
        "--api-keys-file",
        default=os.environ.get("PETMATCH_API_KEYS_FILE"),
        help="staff keys, one key or sha256:<hex of a key> per line (with PETMATCH_API_KEYS, comma-separated keys); "
        "none: a public demo whose visitors register into their own browser session only",
    )
    _env_option(
        parser, "--rate-limit", "PETMATCH_RATE_LIMIT", 120, float,
        "requests that start work (model calls, REST writes, staff logins) per client address and minute, in bursts "
        "of up to twice as many; 0 = no limit; staff keys are not limited",
    )  # fmt: skip
    _env_option(
        parser, "--max-request-mb", "PETMATCH_MAX_REQUEST_MB", MAX_REQUEST_BYTES // 2**20, float,
        "a request body, refused with 413 while it is read",
    )  # fmt: skip
    _env_option(
        parser, "--max-waiting", "PETMATCH_MAX_WAITING", 64, int,
        "model calls (UI and REST together) that may wait for one of the --concurrency workers; more are told to retry",
    )  # fmt: skip
    settings = parser.parse_args(argv)
    if settings.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, got {settings.concurrency}")
    if settings.max_batch_size < 0:
        parser.error(f"--max-batch-size must be 0 (no batching) or more, got {settings.max_batch_size}")
    return settings


def log(message: str) -> None:
    print(f"[petmatch] {message}", flush=True)
