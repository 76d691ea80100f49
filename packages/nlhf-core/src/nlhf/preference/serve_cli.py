"""``nlhf serve MODEL_DIR``: a trained preference model over HTTP (docs/serving.md).

The server itself is the torch backend's (:mod:`nlhf_torch.preference.serve`: FastAPI +
uvicorn, installed with ``pip install 'nlhf-torch[serve]'``); this module only parses the
command line, so ``nlhf --help`` imports neither torch nor FastAPI.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from nlhf.errors import InputError

INSTALL_HINT = "pip install 'nlhf-torch[serve]'"


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the CLI."""
    from nlhf.cli import report_errors

    @app.command("serve")
    @report_errors
    def serve_command(
        model: Annotated[
            Path, typer.Argument(help="A preference model directory (task: preference_model).")
        ],
        host: Annotated[str, typer.Option(help="Address to bind (beyond loopback: token).")] = (
            "127.0.0.1"
        ),
        port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
        device: Annotated[str, typer.Option(help="torch device, e.g. cpu, cuda:0.")] = "cpu",
        dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16.")] = "float32",
        max_length: Annotated[int | None, typer.Option(help="Token limit per text.")] = None,
        max_batch: Annotated[int, typer.Option(help="Comparisons per forward.")] = 32,
        max_wait_ms: Annotated[
            float, typer.Option(help="How long a comparison waits for a batch to fill.")
        ] = 5.0,
        max_queue: Annotated[int, typer.Option(help="Comparisons pending at most.")] = 1024,
        max_request: Annotated[int, typer.Option(help="Comparisons per request.")] = 256,
        max_body_bytes: Annotated[int, typer.Option(help="Request body size limit.")] = 8 * 2**20,
        token_env: Annotated[
            str, typer.Option(help="Environment variable holding the access token.")
        ] = "NLHF_SERVE_TOKEN",
        log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "warning",
    ) -> None:
        """Serve a pairwise or Bradley–Terry preference model: P(a ≻ b) (and r for BT),
        batched across clients, plus an OpenAI-compatible /v1/chat/completions for a judge
        LM (docs/serving.md)."""
        missing = [
            m for m in ("fastapi", "uvicorn", "torch") if importlib.util.find_spec(m) is None
        ]
        if missing:
            raise InputError(
                f"nlhf serve needs {', '.join(missing)}: install them with `{INSTALL_HINT}`"
            )
        if not model.is_dir():
            raise InputError(f"MODEL: {model} is not a directory (a preference model directory)")
        for name, value in (
            ("--max-batch", max_batch),
            ("--max-queue", max_queue),
            ("--max-request", max_request),
            ("--max-body-bytes", max_body_bytes),
        ):
            if value < 1:
                raise InputError(f"{name}: must be at least 1 (got {value})")
        if not 0 <= port <= 65535:
            raise InputError(f"--port: {port} is not a TCP port (0..65535)")
        from nlhf_torch.preference.serve import ServeOptions, serve

        options = ServeOptions(
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            max_request=max_request,
            max_body_bytes=max_body_bytes,
        )
        serve(
            model,
            host=host,
            port=port,
            device=device,
            dtype=dtype,
            max_length=max_length,
            token_env=token_env,
            options=options,
            log_level=log_level,
        )
