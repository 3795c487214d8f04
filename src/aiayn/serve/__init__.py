"""`aiayn serve`: a small local HTTP API and web page for a trained model (see `aiayn.serve.app`)."""

from __future__ import annotations

from aiayn.serve.app import Settings, create_app

__all__ = ["Settings", "create_app", "serve"]


def serve(pretrained, host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    """Serve `pretrained` (an `aiayn.load(DIR)` result) until interrupted. The host given is added to the Host
    allow-list, so binding another address works with requests addressed to it. Connections get
    `settings.idle_timeout` seconds to send each whole request (`aiayn.serve.server`)."""
    import uvicorn

    from aiayn.serve.server import server_config

    settings = settings or Settings()
    if host not in settings.allowed_hosts and host not in ("0.0.0.0", "::"):
        settings.allowed_hosts.append(host)
    config = server_config(create_app(pretrained, settings), host, port, settings.idle_timeout, log_level="info")
    uvicorn.Server(config).run()
