"""The gateway: routes built from descriptors, and the per-request pipeline.

    match route (404/405) -> read headers (metadata, deadline, request id) -> authenticate
    (401) -> rate limit (429) -> build the request message (400/413/415) -> call upstream
    -> render proto3 JSON, or stream NDJSON/SSE -> errors as google.rpc.Status JSON

Everything a route needs (transcoder, renderer, invoker) is built once at start, so the hot
path is lookups and the upstream call. Built-in endpoints (/healthz, /readyz, /openapi.json,
/docs) are answered before the router. Metrics are not among them: they have their own
listener (``GATEWAY_METRICS_PORT``, see ``__main__``), as every service's do, so the public
API port does not publish them (``/metrics`` there is a plain 404).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from gateway.auth import AuthBackend, ClientForwarder, JwtAuth, require
from gateway.docs import DocsAssets
from gateway.errors import GatewayError, retry_after, status_json, upstream_answer, www_authenticate
from gateway.headers import PRINCIPAL_ROLES, PRINCIPAL_SUBJECT, Inbound, inbound, outbound, request_id_from
from gateway.http import Request, Response, StreamResponse
from gateway.limits import TokenBucketLimiter, too_many_requests
from gateway.metrics import GatewayMetrics
from gateway.openapi import build_openapi
from gateway.router import Entry, Router
from gateway.rules import Binding, RuleError, bindings_of_files, load_files, upstream_of
from gateway.settings import GatewaySettings
from gateway.streaming import Encoder, open_stream, wants_sse
from gateway.transcode import RequestTranscoder, ResponseRenderer
from gateway.upstream import ChannelFactory, Invoker
from mesh.errors import MeshError
from mesh.identity import Principal

log = logging.getLogger(__name__)

Builtin = Callable[[Request], Awaitable[Response]]
_JSON_TYPES = ("application/json", "text/json")


@dataclass(slots=True)
class Route:
    binding: Binding
    upstream: str
    public: bool
    transcoder: RequestTranscoder
    renderer: ResponseRenderer
    invoker: Invoker
    label: str


def build_routes(settings: GatewaySettings, factory: ChannelFactory) -> list[Route]:
    """Routes of every http rule in the configured descriptor modules; RuleError if unusable."""
    bindings = list(bindings_of_files(load_files(settings.proto_modules)))
    rpcs = {b.rpc for b in bindings}
    unknown = sorted(settings.public_methods - rpcs)
    if unknown:
        raise RuleError(f"GATEWAY_PUBLIC_METHODS names RPCs without an http rule: {', '.join(unknown)}")
    routes = []
    for binding in bindings:
        upstream = upstream_of(binding)
        routes.append(
            Route(
                binding=binding,
                upstream=upstream,
                public=binding.rpc in settings.public_methods,
                transcoder=RequestTranscoder(
                    binding, settings.limits.max_json_depth, settings.limits.max_page_size
                ),
                renderer=ResponseRenderer(binding),
                invoker=Invoker(binding, upstream, factory),
                label=binding.template.source,
            )
        )
    return routes


class Gateway:
    """Answers one parsed HTTP request; the HTTP server calls :meth:`handle`."""

    def __init__(
        self,
        settings: GatewaySettings,
        factory: ChannelFactory,
        auth: AuthBackend | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.routes: Sequence[Route] = build_routes(settings, factory)
        self.router: Router[Route] = Router(
            [Entry(r.binding.http_method, r.binding.template, r, r.binding.describe()) for r in self.routes]
        )
        self.auth: AuthBackend = auth or JwtAuth(settings.jwt, settings.realm)
        # Tells upstreams the client's address (believed from the gateway's mesh identity).
        self.forwarder = ClientForwarder(settings.security.insecure)
        self.metrics = metrics or GatewayMetrics()
        limits = settings.limits
        self.limiter = (
            TokenBucketLimiter(limits.rate_per_second, limits.rate_burst, limits.max_rate_keys)
            if limits.rate_limited
            else None
        )
        self.upstreams = tuple(sorted({r.upstream for r in self.routes}))
        self.openapi = build_openapi(self.routes, settings)
        self.docs = DocsAssets()
        # Set when the process starts stopping: /readyz then answers 503, so Consul's check
        # and any load balancer stop sending new work while in-flight requests finish.
        self.stopping = False
        self._builtins: dict[str, Builtin] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/openapi.json": self._openapi,
        }

    # -- the pipeline ----------------------------------------------------------------------

    async def handle(self, request: Request) -> Response | StreamResponse:
        started = time.perf_counter()
        label = "unmatched"
        builtin = self._builtins.get(request.path)
        try:
            if builtin is not None or request.path.startswith("/docs"):
                label = request.path if builtin is not None else "/docs"
                response: Response | StreamResponse = await self._builtin(request, builtin)
            else:
                route, values = self.router.match(request.method, request.path)
                label = route.label
                response = await self._proxy(route, values, request)
        except GatewayError as error:
            response = self._gateway_error(error, request)
        self.metrics.request(label, request.method, response.status, time.perf_counter() - started)
        return response

    async def _proxy(
        self, route: Route, values: dict[str, str], request: Request
    ) -> Response | StreamResponse:
        settings = self.settings
        head = inbound(request.headers, settings.default_timeout_seconds, settings.max_timeout_seconds)
        try:
            principal = self.auth.authenticate(head.authorization)
            if not route.public:
                require(principal, settings.realm)
        except GatewayError as error:
            self.metrics.auth_failures.inc()
            raise _with_request_id(error, head.request_id) from None
        if self.limiter is not None:
            wait = self.limiter.take(principal_key(principal, request.client))
            if wait > 0:
                self.metrics.rate_limited.inc()
                raise _with_request_id(too_many_requests(wait), head.request_id)
        try:
            if request.body and route.binding.body:
                _check_content_type(head.content_type)
            message = route.transcoder.build(values, request.query, request.body)
        except GatewayError as error:
            raise _with_request_id(error, head.request_id) from None
        except Exception:
            # The transcoder answers every input it can blame on the client with a 400 naming
            # the field; anything else is our bug. Logged with its traceback, answered as a
            # plain INTERNAL (the client learns nothing of the internals), counted as a 500.
            log.exception("bug while transcoding a request for %s", route.binding.rpc)
            raise _with_request_id(
                GatewayError(grpc.StatusCode.INTERNAL, "internal gateway error"), head.request_id
            ) from None
        metadata = head.metadata
        if head.authorization is not None and principal is not None:
            metadata.append(("authorization", head.authorization))
            metadata.append((PRINCIPAL_SUBJECT, principal.subject))
            metadata.append((PRINCIPAL_ROLES, ",".join(sorted(principal.roles))))
        metadata.extend(self.forwarder.metadata(request.client))
        if route.binding.server_streaming:
            return await self._stream(route, message, head)
        try:
            call = route.invoker.callable(message, timeout=head.timeout, metadata=metadata)
            reply = await call
        except grpc.aio.AioRpcError as error:
            self.metrics.upstream(route.binding.rpc, error.code().name)
            return self._rpc_error(error, route, head)
        except MeshError as error:
            self.metrics.upstream(route.binding.rpc, error.code.name)
            raise _with_request_id(GatewayError(error.code, str(error)), head.request_id) from None
        self.metrics.upstream(route.binding.rpc, "OK")
        headers = [("x-request-id", head.request_id)]
        allow = settings.response_metadata
        if allow:
            headers += outbound(allow, await call.initial_metadata(), await call.trailing_metadata())
        return Response(200, route.renderer.render(reply), headers=headers)

    async def _stream(self, route: Route, message: object, head: Inbound) -> Response | StreamResponse:
        timeout = head.timeout if head.timeout_given else self.settings.stream_timeout_seconds
        call = route.invoker.callable(message, timeout=timeout, metadata=head.metadata)
        encoder = Encoder(route.renderer, wants_sse(head.accept), route.upstream)
        try:
            response = await open_stream(call, encoder, [("x-request-id", head.request_id)])
        except grpc.aio.AioRpcError as error:
            self.metrics.upstream(route.binding.rpc, error.code().name)
            return self._rpc_error(error, route, head)
        self.metrics.upstream(route.binding.rpc, "OK")
        return response

    # -- errors ----------------------------------------------------------------------------

    def _rpc_error(self, error: grpc.aio.AioRpcError, route: Route, head: Inbound) -> Response:
        answer = upstream_answer(error, route.upstream)
        if not answer.own and error.code() is not grpc.StatusCode.CANCELLED:
            # The client gets the gateway's words; what grpc-core said is for operators.
            log.warning(
                "upstream %s failed in transport: %s %s",
                route.binding.rpc,
                error.code().name,
                (error.details() or "")[:500],
                extra={"request_id": head.request_id},
            )
        headers = [("x-request-id", head.request_id)]
        headers += outbound(
            self.settings.response_metadata, error.initial_metadata(), error.trailing_metadata()
        )
        if answer.own and answer.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]:
            headers.append(("www-authenticate", www_authenticate(self.settings.realm)))
        if answer.own and answer.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]:
            headers += retry_after(answer.status)
        return Response(answer.http_status, status_json(answer.status), headers=headers)

    def _gateway_error(self, error: GatewayError, request: Request) -> Response:
        headers = list(error.headers)
        if not any(name == "x-request-id" for name, _ in headers):
            headers.append(("x-request-id", request_id_from(request.header("x-request-id"))))
        return Response(error.http_status, status_json(error.status()), headers=headers)

    # -- built-in endpoints ----------------------------------------------------------------

    async def _builtin(self, request: Request, builtin: Builtin | None) -> Response:
        if request.method != "GET":
            raise GatewayError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"method {request.method} is not allowed on {request.path[:200]}",
                reason="METHOD_NOT_ALLOWED",
                http_status=405,
                headers=[("allow", "GET")],
            )
        if builtin is not None:
            return await builtin(request)
        asset = self.docs.get(request.path)
        if asset is None:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND, f"no route for {request.path[:200]}", reason="ROUTE_NOT_FOUND"
            )
        body, content_type = asset
        return Response(200, body, content_type, [("cache-control", "public, max-age=300")])

    async def _healthz(self, request: Request) -> Response:
        return Response(200, b'{"status":"ok"}')

    async def _readyz(self, request: Request) -> Response:
        missing = [name for name in self.upstreams if self.factory.endpoint_count(name) < 1]
        if missing or not self.routes or self.stopping:
            if self.stopping:
                reason = "not ready: stopping"
            elif missing:
                reason = f"not ready: no endpoint known for {', '.join(missing)}"
            else:
                reason = "not ready: no routes"
            error = GatewayError(grpc.StatusCode.UNAVAILABLE, reason, reason="NOT_READY")
            return Response(503, status_json(error.status()))
        return Response(200, b'{"status":"ready","routes":%d}' % len(self.routes))

    async def _openapi(self, request: Request) -> Response:
        return Response(200, self.openapi)


def _with_request_id(error: GatewayError, request_id: str) -> GatewayError:
    error.headers.append(("x-request-id", request_id))
    return error


def _check_content_type(content_type: str | None) -> None:
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _JSON_TYPES or media.endswith("+json"):
        return
    raise GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"unsupported content type {media[:100]!r}: send application/json",
        reason="UNSUPPORTED_MEDIA_TYPE",
        http_status=415,
    )


def principal_key(principal: Principal | None, client: str) -> str:
    return f"sub:{principal.subject}" if principal is not None else f"ip:{client}"
