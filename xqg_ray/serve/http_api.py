"""The FastAPI app of the router: routes, body-size limit, optional bearer token, error mapping.

Built per router replica (`build_api(router)`), so limits and the token come from that
replica's configuration. Every failure a client can cause is a 4xx with a message saying what is
wrong; a service that cannot answer completely says so (503, or `partial` in the answer). A
replica already holding its share of search requests sheds more at once (503 with `Retry-After`,
`LoadShedder`) instead of letting them queue without bound.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials as Credentials
from fastapi.security import HTTPBearer
from starlette.datastructures import Headers

import xqg_ray
from xqg_ray.errors import InputError, XqgError
from xqg_ray.serve.config import Limits
from xqg_ray.serve.schemas import (
    ErrorBody,
    Health,
    SearchRequest,
    SearchResponse,
    VectorSearchRequest,
)
from xqg_ray.serve.stats import ServiceStats

BEARER = HTTPBearer(auto_error=False)
# declared so the OpenAPI schema matches what the service really answers on failure
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 413, 422, 503)
}
ROUTES = ["/search", "/search_vectors", "/healthz", "/stats"]
SEARCH_ROUTES = frozenset(["/search", "/search_vectors"])


class ServiceUnavailable(XqgError):
    """Shards or the encoder cannot answer: HTTP 503, naming what is missing."""

    def __init__(self, message: str, missing_shards: list[int] | None = None):
        super().__init__(message)
        self.missing_shards = missing_shards or []


class NotSupported(XqgError):
    """The request needs something this deployment was started without (HTTP 400)."""


class Router(Protocol):
    limits: Limits
    token: str | None
    stats: ServiceStats
    shedding: Shedding | None

    async def search_texts(self, queries: list[str], k: int, include_text: bool) -> dict: ...

    async def search_vectors(
        self, vectors: list[list[float]], k: int, include_text: bool
    ) -> dict: ...

    def health(self) -> dict: ...

    def stats_snapshot(self) -> dict: ...


class BodyLimit:
    """Refuses a request body over `limit` bytes with a 413 in the API's JSON error shape: from
    its Content-Length at once, or, for a body without one, as soon as it grows past the limit.
    (Starlette's own limiter answers in plain text, which the API does not document.)"""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"request body larger than {self.limit} bytes"
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await _error(413, detail)(scope, receive, send)
            return
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # handled by FastAPI: a JSON 413
                raise HTTPException(413, detail)
            return message

        await self.app(scope, counted, send)


class Shedding:
    """At most `limit` search requests held by a router replica at once (being answered or
    waiting); the rest are answered 503 at once, with `Retry-After`."""

    def __init__(self, limit: int, retry_after_s: int):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.detail = (
            f"the service is overloaded: this replica already holds {limit} search requests "
            f"(max_queued_requests); retry after {retry_after_s} s, or raise "
            "max_queued_requests (longer waits under load) or add router replicas and CPUs"
        )


class LoadShedder:
    """ASGI middleware: a search request that finds `shedding.limit` others in this replica is
    answered 503 in the API's JSON error shape with `Retry-After`, before its body is read, so
    an overload is refused in about a millisecond instead of queueing without bound. /healthz
    and /stats are never shed (health checks must answer under load)."""

    def __init__(self, app: Any, shedding: Shedding):
        self.app = app
        self.shedding = shedding
        self.holding = 0  # search requests in this replica now

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _route(scope) not in SEARCH_ROUTES:
            await self.app(scope, receive, send)
            return
        if self.holding >= self.shedding.limit:
            headers = {"Retry-After": str(self.shedding.retry_after_s)}
            await _error(503, self.shedding.detail, headers=headers)(scope, receive, send)
            return
        self.holding += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.holding -= 1


def _route(scope: dict) -> str:
    """The request's path below the application's route prefix."""
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class RequestRecorder:
    """ASGI middleware: records each request's status and latency per route for /stats."""

    def __init__(self, app: Any, stats: ServiceStats):
        self.app = app
        self.stats = stats

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_recording(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.stats.in_flight += 1
        try:
            await self.app(scope, receive, send_recording)
        finally:
            self.stats.in_flight -= 1
            self.stats.record(_route(scope), status, (time.perf_counter() - started) * 1000)


def _error(
    status: int, detail: Any, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def build_api(router: Router) -> FastAPI:
    """The HTTP API over a router; /healthz is always open, the rest needs the token if set."""
    open_docs = router.token is None
    api = FastAPI(
        title="xqg-ray search",
        version=xqg_ray.__version__,
        description="Sharded FAISS search over an xqg-ray index.",
        openapi_url="/openapi.json" if open_docs else None,
        docs_url="/docs" if open_docs else None,
        redoc_url=None,
    )
    if router.shedding is not None:  # innermost of the three: shed requests are recorded
        api.add_middleware(LoadShedder, shedding=router.shedding)
    api.add_middleware(RequestRecorder, stats=router.stats)
    api.add_middleware(BodyLimit, limit=router.limits.max_body_bytes)  # 413 before parsing

    def require_token(credentials: Annotated[Credentials | None, Depends(BEARER)]) -> None:
        if router.token is None:
            return
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), router.token.encode()):
            raise HTTPException(
                401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    protected = [Depends(require_token)]

    @api.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return _error(422, str(exc))

    @api.exception_handler(NotSupported)
    async def _not_supported(_: Request, exc: NotSupported) -> JSONResponse:
        return _error(400, str(exc))

    @api.exception_handler(ServiceUnavailable)
    async def _unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return _error(503, str(exc), missing_shards=exc.missing_shards)

    @api.post("/search", response_model=SearchResponse, dependencies=protected, responses=ERRORS)
    async def search(body: SearchRequest) -> JSONResponse:
        """Encode the query texts and return the top-k passages of each."""
        return JSONResponse(await router.search_texts(body.queries, body.k, body.include_text))

    @api.post(
        "/search_vectors", response_model=SearchResponse, dependencies=protected, responses=ERRORS
    )
    async def search_vectors(body: VectorSearchRequest) -> JSONResponse:
        """Top-k passages for query vectors encoded by the caller."""
        return JSONResponse(await router.search_vectors(body.vectors, body.k, body.include_text))

    @api.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        return router.health()

    @api.get("/stats", dependencies=protected, responses={401: {"model": ErrorBody}})
    async def stats() -> dict:
        """Index manifest, shard sizes, request counts and latency percentiles (this replica)."""
        return router.stats_snapshot()

    return api
