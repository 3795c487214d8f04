"""The local HTTP API and its web page (FastAPI on uvicorn).

    POST /v1/translate  {"text": str or [str, ...], "beam": 4, "alpha": 0.6, "max_len": null} -> {"translations"}
    POST /v1/generate   {"prompt": str, "max_new_tokens": 100, "temperature": 1, "top_k": 0, "top_p": 1, "seed"}
    POST /v1/attention  {"text": str} -> tokens, and weights per layer and head
    GET  /health        -> {"status": "ok", "arch": ...}
    GET  /              the web page

Safe by default: the command binds 127.0.0.1; bodies over 1 MiB get 413; POST bodies must be application/json
(415) and well-formed (400); every option is validated, strictly typed (422 naming the field and its bound), and
so is the work a request asks for (texts x beam x positions, `max_work`); requests whose Host is not on the
allow-list get 400; no cross-origin access unless origins are given; errors never carry stack traces or server
paths, and every error body is {"error": str} (+ "fields": [{"field", "message"}] for 422). At most
`max_in_flight` requests run at once and `queue` more wait for a slot; the rest get 503 at once (Retry-After).
Each request has a deadline (`request_timeout`, queueing included: then 503), and one whose client goes away is
abandoned within a decoding step (`guard.Budget`); idle or slow connections are closed (`server`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from aiayn.config import DECODE_DEFAULTS as D
from aiayn.config import EXTRA_LENGTH, DecodeConfig, TaskKind
from aiayn.decoding import Cancelled
from aiayn.errors import UserError
from aiayn.serve.guard import Full, Guard, Slots, Stopped, budget_of

log = logging.getLogger("aiayn.serve")

MAX_BODY = 1 << 20  # bytes
MAX_TEXT = 2000  # characters per sentence or prompt
MAX_ATTENTION_TEXT = 300  # characters: the weights grow with its square (1,000 characters answered 54 MB)
MAX_SENTENCES = 64
MAX_NEW_TOKENS = 512
MAX_BEAM = 16
FLOAT32_TINY = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny
# texts x beam x (longest source + output allowance, in tokens): at most ~2.3 s measured on 2 idle cores with a
# demo-sized model (d_model 128, 2 + 2 layers) that never emits EOS, so always decodes to its length limit.
MAX_WORK = 16384


@dataclass
class Settings:
    """max_in_flight: requests decoding at once; queue: how many more may wait for a slot (None: 2 x
    max_in_flight); request_timeout: seconds from arrival to answer (queueing included) before a 503;
    idle_timeout: seconds a connection may take to send a whole request (or sit idle between requests);
    max_work: the largest texts x beam x positions one request may ask for."""

    max_body: int = MAX_BODY
    max_in_flight: int = 4
    allowed_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost", "[::1]"])
    cors_origins: list[str] = field(default_factory=list)
    request_timeout: float = 30.0
    idle_timeout: float = 10.0
    max_work: int = MAX_WORK
    queue: int | None = None

    @property
    def waiting(self) -> int:
        return 2 * self.max_in_flight if self.queue is None else self.queue


Text = Annotated[str, Field(max_length=MAX_TEXT)]


class _Strict(BaseModel):
    # A misspelt option is an error, not silently ignored; "4" or 4.0 for an integer is refused, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True)


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
        # The sampler divides float32 logits by the temperature as a float32: one below float32's smallest normal
        # number becomes 0 there (0 / 0: NaN). So small a temperature samples the argmax anyway: ask for that.
        temperature = 0.0 if self.temperature < FLOAT32_TINY else self.temperature
        return DecodeConfig.of(temperature=temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)


class AttentionRequest(_Strict):
    text: Annotated[str, Field(min_length=1, max_length=MAX_ATTENTION_TEXT)]
    beam: int = Field(1, ge=1, le=MAX_BEAM)


class _Busy(Exception):
    pass


class _Unsupported(Exception):
    pass


class _TooMuch(Exception):
    def __init__(self, fields: list[dict[str, str]]) -> None:
        self.fields = fields


def create_app(pretrained, settings: Settings | None = None):
    """The ASGI app serving one loaded model (`aiayn.load(DIR)`)."""
    settings = settings or Settings()
    app = FastAPI(title="aiayn", docs_url=None, redoc_url=None, openapi_url=None)
    slots = Slots(settings.max_in_flight, settings.waiting)

    async def run(request: Request, work):
        """Run `work(should_stop)` in a worker thread once a slot is free (waiting in the queue, within the
        request's deadline); 503 at once when the queue is full, 503 when the deadline passes (Stopped)."""
        budget = budget_of(request.scope)
        try:
            await slots.acquire(budget)
        except Full:
            raise _Busy from None
        try:
            return await anyio.to_thread.run_sync(work, budget.should_stop)
        except Cancelled:
            raise Stopped from None
        finally:
            slots.release()

    _add_error_handlers(app, settings)
    _add_routes(app, pretrained, run, _Work(pretrained, settings.max_work))
    outer = app
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        outer = CORSMiddleware(outer, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"])
    return Guard(outer, settings)


class _Work:
    """The work a request asks for: rows (texts x beam) x positions (the longest source, in tokens, + what it may
    produce), each cut at the model's length; over `limit` is a 422 naming the fields to shrink."""

    def __init__(self, pretrained, limit: int) -> None:
        self.tokenizer, self.limit = pretrained.tokenizer, limit
        self.positions = pretrained.model.config.max_len

    def check(self, texts: list[str], beam: int, new_tokens: int | None, names: tuple[str, ...]) -> None:
        longest = max((len(ids) + 1 for ids in self.tokenizer.encode_batch(texts)), default=1)
        source = min(longest, self.positions)
        output = min(new_tokens if new_tokens is not None else source + EXTRA_LENGTH, self.positions)
        work = len(texts) * beam * (source + output)
        if work > self.limit:
            what = f"{len(texts)} text(s) x beam {beam} x {source + output} positions ({source} source + {output} new)"
            message = f"asks for {what} = {work:,} units of work, over the server's limit of {self.limit:,}"
            raise _TooMuch([{"field": name, "message": message} for name in names])


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI, settings: Settings) -> None:
    """400 for malformed JSON, 422 naming the field for invalid requests, 503 when busy or out of time, 400 for
    the other kind of model, the status of HTTP errors (404, 405), 500 (no details) for anything else."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        malformed = [e for e in errors if e.get("type") == "json_invalid"]
        if malformed:
            return _error(400, f"malformed JSON: {malformed[0].get('ctx', {}).get('error', 'cannot be parsed')}")
        fields = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body") or "body", "message": e["msg"]} for e in errors
        ]
        return _error(422, "invalid request", fields=fields)

    @app.exception_handler(UserError)
    async def bad_value(request: Request, exc: UserError):
        return _error(422, "invalid request", fields=[{"field": "", "message": str(exc)}])

    @app.exception_handler(_TooMuch)
    async def too_much(request: Request, exc: _TooMuch):
        return _error(422, "invalid request: too much work in one request", fields=exc.fields)

    @app.exception_handler(_Busy)
    async def busy(request: Request, exc: _Busy):
        message = f"busy: {settings.max_in_flight} requests in flight and {settings.waiting} waiting; retry shortly"
        return _error(503, message, {"Retry-After": "1"})

    @app.exception_handler(Stopped)
    async def stopped(request: Request, exc: Stopped):
        message = f"timed out: no answer within {settings.request_timeout:g} s (the server's request timeout)"
        return _error(503, message, {"Retry-After": "1"})

    @app.exception_handler(_Unsupported)
    async def unsupported(request: Request, exc: _Unsupported):
        return _error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("request failed")  # the server's log has the details; the client gets none
        return _error(500, "internal error")


def _add_routes(app: FastAPI, pretrained, run, work: _Work) -> None:
    arch = pretrained.model.config.arch  # reported as it is; the routes depend only on the task kind
    task = pretrained.task

    @app.get("/health")
    def health():
        return {"status": "ok", "arch": arch}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return (resources.files("aiayn.serve") / "static" / "index.html").read_text(encoding="utf-8")

    @app.post("/v1/translate")
    async def translate(body: TranslateRequest, request: Request):
        if task is not TaskKind.PAIRS:
            raise _Unsupported("this model is a language model: use /v1/generate")
        texts = [body.text] if isinstance(body.text, str) else body.text
        work.check(texts, body.beam, body.max_len, ("text", "beam", "max_len"))
        decode = body.decode()

        def decode_(stop):
            return pretrained.translate(texts, decode=decode, should_stop=stop)

        return {"translations": await run(request, decode_)}

    @app.post("/v1/generate")
    async def generate(body: GenerateRequest, request: Request):
        if task is not TaskKind.TEXT:
            raise _Unsupported("this model translates: use /v1/translate")
        work.check([body.prompt], 1, body.max_new_tokens, ("prompt", "max_new_tokens"))
        decode = body.decode()

        def decode_(stop):
            return pretrained.generate(body.prompt, body.max_new_tokens, decode=decode, should_stop=stop)

        return {"text": await run(request, decode_)}

    @app.post("/v1/attention")
    async def attention(body: AttentionRequest, request: Request):
        work.check([body.text], body.beam, None, ("text", "beam"))

        def record(stop):
            if stop():  # recording has no per-step check: its text is short (MAX_ATTENTION_TEXT)
                raise Cancelled
            attn = pretrained.attention(body.text, beam=body.beam)
            weights = {
                name: [[[round(float(x), 4) for x in row] for row in head] for head in w]
                for name, w in attn.weights.items()
            }
            return attn, weights

        attn, weights = await run(request, record)
        # Layers and heads as recorded, not as configured: a recurrent family attends once, from its top decoder
        # layer, with one head ("decoder.cross_attn"), whatever its n_decoder_layers and its unused n_heads say.
        layers = len({name.rsplit(".", 1)[0] for name in attn.weights if name.startswith("decoder.")}) or 1
        heads = next(iter(attn.weights.values())).shape[0] if attn.weights else 0
        return {"arch": arch, "source": attn.source, "target": attn.target, "output": attn.output, "text": attn.text,
                "layers": layers, "heads": heads, "weights": weights}  # fmt: skip
