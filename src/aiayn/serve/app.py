"""The local HTTP API and its web page (FastAPI on uvicorn).

    POST /v1/translate  {"text": str or [str, ...], "beam": 4, "alpha": 0.6, "max_len": null} -> {"translations"}
    POST /v1/generate   {"prompt": str, "max_new_tokens": 100, "temperature": 1, "top_k": 0, "top_p": 1, "seed"}
    POST /v1/attention  {"text": str} -> tokens, and weights per layer and head
    GET  /health        -> {"status": "ok", "arch": ...}
    GET  /              the web page

Safe by default: the command binds 127.0.0.1; bodies over 1 MiB get 413; every option is validated (422 naming the
field and its bound); requests whose Host is not on the allow-list get 400; no cross-origin access unless origins
are given; errors never carry stack traces or server paths; at most `max_in_flight` requests run at once, the
rest get 503 at once (with Retry-After) instead of queueing.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from aiayn.config import DECODE_DEFAULTS as D
from aiayn.config import DecodeConfig, TaskKind
from aiayn.errors import UserError

log = logging.getLogger("aiayn.serve")

MAX_BODY = 1 << 20  # bytes
MAX_TEXT = 2000  # characters per sentence or prompt
MAX_SENTENCES = 64
MAX_NEW_TOKENS = 512
MAX_BEAM = 16


@dataclass
class Settings:
    max_body: int = MAX_BODY
    max_in_flight: int = 4
    allowed_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost", "[::1]"])
    cors_origins: list[str] = field(default_factory=list)


Text = Annotated[str, Field(max_length=MAX_TEXT)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not silently ignored


class TranslateRequest(_Strict):
    text: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_SENTENCES)]
    beam: int = Field(D.beam_size, ge=1, le=MAX_BEAM)  # DecodeConfig.beam_size
    alpha: float = Field(D.alpha, ge=0.0, le=10.0, allow_inf_nan=False)
    max_len: int | None = Field(D.max_len, ge=1, le=MAX_NEW_TOKENS)

    def decode(self) -> DecodeConfig:
        return DecodeConfig.of(beam=self.beam, alpha=self.alpha, max_len=self.max_len)


class GenerateRequest(_Strict):
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
    max_new_tokens: int = Field(100, ge=0, le=MAX_NEW_TOKENS)
    temperature: float = Field(D.temperature, ge=0.0, le=10.0, allow_inf_nan=False)
    top_k: int = Field(D.top_k, ge=0, le=100_000)
    top_p: float = Field(D.top_p, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(D.seed, ge=0, le=2**63 - 1)

    def decode(self) -> DecodeConfig:
        return DecodeConfig.of(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)


class AttentionRequest(_Strict):
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
    beam: int = Field(1, ge=1, le=MAX_BEAM)


class BodyLimit:
    """ASGI middleware: reads at most `limit` bytes of a request body; more (announced or sent) is 413."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and not declared.isdigit():
            return await _send_json(send, 400, {"error": "Content-Length is not a number"})
        if declared is not None and int(declared) > self.limit:
            return await _send_json(send, 413, {"error": f"request body over {self.limit:,} bytes"})
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await _send_json(send, 413, {"error": f"request body over {self.limit:,} bytes"})
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _send_json(send, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class _Busy(Exception):
    pass


class _Unsupported(Exception):
    pass


def create_app(pretrained, settings: Settings | None = None):
    """The ASGI app serving one loaded model (`aiayn.load(DIR)`)."""
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    settings = settings or Settings()
    app = FastAPI(title="aiayn", docs_url=None, redoc_url=None, openapi_url=None)
    in_flight = threading.BoundedSemaphore(settings.max_in_flight)

    def run(work):
        """Run model work if a slot is free; else 503 at once (see _Busy)."""
        if not in_flight.acquire(blocking=False):
            raise _Busy
        try:
            return work()
        finally:
            in_flight.release()

    _add_error_handlers(app, settings)
    _add_routes(app, pretrained, run)
    outer = TrustedHostMiddleware(app, allowed_hosts=settings.allowed_hosts)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        outer = CORSMiddleware(outer, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"])
    return BodyLimit(outer, settings.max_body)


def _add_error_handlers(app: FastAPI, settings: Settings) -> None:
    """422 naming the field for invalid requests, 503 when busy, 400 for the other kind of model, 500 (no
    details) for anything else."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        fields = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body") or "body", "message": e["msg"]}
            for e in exc.errors()
        ]
        return JSONResponse({"error": "invalid request", "fields": fields}, status_code=422)

    @app.exception_handler(UserError)
    async def bad_value(request: Request, exc: UserError):
        return JSONResponse({"error": "invalid request", "fields": [{"field": "", "message": str(exc)}]}, 422)

    @app.exception_handler(_Busy)
    async def busy(request: Request, exc: _Busy):
        message = f"busy: {settings.max_in_flight} requests in flight; retry shortly"
        return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(_Unsupported)
    async def unsupported(request: Request, exc: _Unsupported):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("request failed")  # the server's log has the details; the client gets none
        return JSONResponse({"error": "internal error"}, status_code=500)


def _add_routes(app: FastAPI, pretrained, run) -> None:
    arch = pretrained.model.config.arch  # reported as it is; the routes depend only on the task kind
    task = pretrained.task

    @app.get("/health")
    def health():
        return {"status": "ok", "arch": arch}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return (resources.files("aiayn.serve") / "static" / "index.html").read_text(encoding="utf-8")

    @app.post("/v1/translate")
    def translate(request: TranslateRequest):
        if task is not TaskKind.PAIRS:
            raise _Unsupported("this model is a language model: use /v1/generate")
        texts = [request.text] if isinstance(request.text, str) else request.text
        return {"translations": run(lambda: pretrained.translate(texts, decode=request.decode()))}

    @app.post("/v1/generate")
    def generate(request: GenerateRequest):
        if task is not TaskKind.TEXT:
            raise _Unsupported("this model translates: use /v1/translate")
        return {"text": run(lambda: pretrained.generate(request.prompt, request.max_new_tokens,
                                                        decode=request.decode()))}  # fmt: skip

    @app.post("/v1/attention")
    def attention(request: AttentionRequest):
        attn = run(lambda: pretrained.attention(request.text, beam=request.beam))
        weights = {
            name: [[[round(float(x), 4) for x in row] for row in head] for head in w]
            for name, w in attn.weights.items()
        }
        c = pretrained.model.config
        return {"arch": arch, "source": attn.source, "target": attn.target, "output": attn.output, "text": attn.text,
                "layers": c.n_decoder_layers, "heads": c.n_heads, "weights": weights}  # fmt: skip
