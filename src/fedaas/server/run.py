"""Start the coordinator: state folder, admin token, socket, uvicorn."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from types import FrameType

import uvicorn

from fedaas.server.app import create_app
from fedaas.server.auth import load_admin_token

ENDPOINT_FILE = "endpoint.json"
log = logging.getLogger("fedaas.server")


def serve(
    state: Path, host: str = "127.0.0.1", port: int = 8080, db_url: str | None = None
) -> None:
    """Run the coordinator until interrupted.

    ``port=0`` binds a free port. Once listening, the URL and PID are written
    to ``<state>/endpoint.json`` so scripts and tests can find the server.
    """
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    token, token_source = load_admin_token(state)
    db_url = db_url or f"sqlite:///{state / 'fedaas.db'}"
    app = create_app(state, db_url, token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{bound}"
    endpoint = state / ENDPOINT_FILE
    tmp = endpoint.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    os.replace(tmp, endpoint)
    log.warning("fedaas coordinator on %s (admin token: %s)", url, token_source)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=75,
        timeout_graceful_shutdown=2,
    )
    coordinator = app.state.coordinator

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            coordinator.request_close()  # long-polls return at once instead of holding shutdown
            super().handle_exit(sig, frame)

    try:
        _Server(config).run(sockets=[sock])
    finally:
        endpoint.unlink(missing_ok=True)
