"""The FastAPI app: the routes, and the rules every request passes first.

From the outside in: CORS (only with --cors-allow-origins), HTTP basic auth on every route, the page included
(with --api-auth; A1111's realm and messages), and the body size limit (413, also for bodies without a length).
Errors keep A1111's shapes: a bad field is 422 with FastAPI's `detail` list naming it; a refused request 400, an
internal failure 500 with A1111's `{error, detail, body, errors}`; a full queue 429 with Retry-After.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from sdkit.errors import UserError
from sdkit.server.a1111 import FieldError
from sdkit.server.config import ServerConfig
from sdkit.server.store import QueueFull
from sdkit.server.uploads import NotFound
from sdkit.server.workers import Hub


async def send_json(send, status: int, content: dict, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(content).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BasicAuth:
    """HTTP basic authentication on every HTTP request (A1111's --api-auth; constant-time comparison)."""

    def __init__(self, app, credentials: dict[str, str]):
        self.app, self.credentials = app, credentials

    def allowed(self, header: bytes | None) -> bool:
        if not header or not header.lower().startswith(b"basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        expected = self.credentials.get(user)
        return expected is not None and secrets.compare_digest(password.encode(), expected.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization")
        if not self.allowed(header):
            detail = "Not authenticated" if header is None else "Incorrect username or password"
            return await send_json(send, 401, {"detail": detail}, {"WWW-Authenticate": 'Basic realm="sdkit"'})
        return await self.app(scope, receive, send)


class BodyLimit:
    """413 past `limit` bytes: from Content-Length before anything is read, or as soon as a streamed (chunked) body
    passes it; the app then sees the client gone, and whatever it answers is dropped."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await send_json(send, 413, self.detail())
        seen, refused = 0, False

        async def counted():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    await send_json(send, 413, self.detail())
                    return {"type": "http.disconnect"}
            return message

        async def answer(message):
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, answer)
        except Exception:
            if not refused:
                raise

    def detail(self) -> dict:
        return {"detail": f"request body larger than {self.limit // 2**20} MiB (--max-body-mb)"}


def error_body(err: Exception, detail: str) -> dict:
    """A1111's error response."""
    return {"error": type(err).__name__, "detail": detail, "body": "", "errors": detail}


def add_handlers(app: FastAPI) -> None:
    from sdkit.server.routes_a1111 import JobFailed

    @app.exception_handler(FieldError)
    async def field_error(_request: Request, err: FieldError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": ["body", *err.loc], "msg": err.msg, "type": "value_error"}]}, 422)

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, err: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 404)

    @app.exception_handler(UserError)
    async def user_error(_request: Request, err: UserError) -> JSONResponse:
        return JSONResponse(error_body(err, str(err)), 400)

    @app.exception_handler(JobFailed)
    async def job_failed(_request: Request, err: JobFailed) -> JSONResponse:
        return JSONResponse(error_body(err, str(err)), err.status)

    @app.exception_handler(QueueFull)
    async def queue_full(_request: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 429, headers={"Retry-After": str(err.retry_after)})


def create_app(config: ServerConfig, hub: Hub | None = None) -> FastAPI:
    """The app for `config`; its hub (queue and workers) starts with the app and stops with it."""
    import contextlib

    from sdkit.server.routes_a1111 import router as a1111_router
    from sdkit.server.routes_sdkit import STATIC
    from sdkit.server.routes_sdkit import router as sdkit_router

    hub = hub if hub is not None else Hub(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        hub.start()
        yield
        hub.stop()

    app = FastAPI(title="sdkit", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.hub = hub
    app.include_router(a1111_router)
    app.include_router(sdkit_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_handlers(app)
    app.add_middleware(BodyLimit, limit=config.max_body_mb * 2**20)
    if config.credentials:
        app.add_middleware(BasicAuth, credentials=config.credentials)
    if config.cors_allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_allow_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials="*" not in config.cors_allow_origins)  # fmt: skip
    return app
