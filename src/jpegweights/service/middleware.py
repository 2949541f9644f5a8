"""One ASGI middleware: body-size limit (413), request metrics and a JSON log line per request."""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("jpegweights.access")


class BodyTooLarge(Exception):
    pass


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int):
        self.app, self.max_body_bytes, self.max_upload_bytes = app, max_body_bytes, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        runtime = scope["app"].state.runtime
        t0 = time.perf_counter()
        status = 500
        started = False

        upload = scope["method"] == "PUT" and scope["path"].startswith("/models/")
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            status = 413
            await self._reject(send, f"body of {int(declared)} bytes exceeds the limit of {limit}")
            self._record(runtime, scope, status, t0)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                status = 413
                await self._reject(send, f"body exceeds the limit of {limit} bytes")
        finally:
            self._record(runtime, scope, status, t0)

    @staticmethod
    async def _reject(send: Send, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _record(runtime, scope: Scope, status: int, t0: float) -> None:
        seconds = time.perf_counter() - t0
        route = getattr(scope.get("route"), "path", "unmatched")
        runtime.metrics.requests.labels(route, scope["method"], str(status)).inc()
        runtime.metrics.latency.labels(route).observe(seconds)
        if runtime.settings.log_requests:
            log.info(
                json.dumps(
                    {
                        "event": "request",
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "ms": round(seconds * 1e3, 2),
                    }
                )
            )
