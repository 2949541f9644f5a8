"""The service on Ray Serve: every replica runs the service's own app (``create_app``: its routes,
handlers, batching, ``/weights`` and the page) behind Ray's HTTP proxy. Ray keeps the replicas
(their number, autoscaling, restarts); nothing of that is written here.

    serve run deploy/ray/serve.yaml                                   # replicas, autoscaling: the config
    serve run jpegweights.deploy.ray:app source=http://models:8000 num_replicas=2

A replica fills its own model store from ``source`` (``deploy.source.prepare_store``): another
jpegweights server, whose ``.jpw`` packages it fetches and verifies (no shared disk needed), or a
shared folder. The service's settings come from ``JPEGWEIGHTS_*`` variables (``runtime_env``);
``JPEGWEIGHTS_SOURCE_TOKEN`` is the source server's token. Every answer carries
``X-Jpegweights-Replica``, the replica's id.

>>> from ray import serve
>>> serve.run(app({"source": "http://127.0.0.1:8000", "num_replicas": 2}))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from ray.serve import Application

from jpegweights.files import cache_dir
from jpegweights.service import Settings, create_app

from .source import LocalStore, prepare_store

REPLICA_HEADER = "x-jpegweights-replica"


class RayArgs(BaseModel):
    """The application's arguments (``args:`` of a Serve config, ``key=value`` of ``serve run``)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="a jpegweights server's URL, or a model store folder that every node can read")
    models: list[str] | None = Field(None, description="the models to serve (default: all the source serves)")
    work_dir: Path | None = Field(None, description="each node's folder for fetched packages (default: the cache)")
    num_replicas: int | None = Field(None, ge=1, description="fixed replicas (a config's deployments: wins)")

    @field_validator("models", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return [m.strip() for m in value.split(",") if m.strip()] if isinstance(value, str) else value


class ReplicaHeader:
    """ASGI middleware: ``X-Jpegweights-Replica: <id>`` on every answer, so a client (and the
    tests) can tell which replica answered."""

    def __init__(self, app: Any, replica: str):
        self.app, self.value = app, replica.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER.encode(), self.value)]
            await send(message)

        await self.app(scope, receive, send_with_header)


def replica_settings(store: LocalStore, work_dir: Path) -> Settings:
    """The service's settings in a replica: ``JPEGWEIGHTS_*`` variables, with the fetched store,
    the source's default model and as many inference workers as Ray gave the replica CPUs, unless
    those variables say otherwise."""
    import ray

    overrides: dict[str, Any] = {"model_dir": store.model_dir, "cache_dir": work_dir / "server"}
    if store.default_model and "JPEGWEIGHTS_DEFAULT_MODEL" not in os.environ:
        overrides["default_model"] = store.default_model
    if "JPEGWEIGHTS_INFERENCE_WORKERS" not in os.environ:  # all the machine's cores would oversubscribe them
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        overrides["inference_workers"] = max(1, round(cpus))
    return Settings(**overrides)


@serve.deployment(name="JpegWeights", max_ongoing_requests=32, health_check_period_s=5)
@serve.ingress()
class JpegWeights:
    """One replica: its store prepared in the constructor, then the service's app (late-bound,
    so that Serve runs its lifespan, which loads every model, before the replica takes requests)."""

    def __init__(self, source: str, models: list[str] | None = None, work_dir: str | None = None):
        self.work_dir = Path(work_dir) if work_dir else cache_dir("ray")
        self.store = prepare_store(
            source, self.work_dir, models=models, token=os.environ.get("JPEGWEIGHTS_SOURCE_TOKEN") or None
        )
        self.replica = serve.get_replica_context().replica_tag
        self.runtime: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(replica_settings(self.store, self.work_dir))
        app.add_middleware(ReplicaHeader, replica=self.replica)
        self.runtime = app.state.runtime
        return app

    def check_health(self) -> None:
        """Ray replaces a replica whose check raises: one that serves no model."""
        if self.runtime is None or not self.runtime.ready:
            raise RuntimeError("the replica serves no model (see its log: every model failed to load)")

    def __del__(self) -> None:
        if hasattr(self, "store"):  # not if the constructor failed
            self.store.remove()


def app(args: dict[str, Any]) -> Application:
    """The application builder ``serve run`` and Serve configs name (``jpegweights.deploy.ray:app``).

    >>> serve.run(app({"source": "models"}))  # a shared store folder
    """
    parsed = RayArgs.model_validate(args)
    deployment = JpegWeights if parsed.num_replicas is None else JpegWeights.options(num_replicas=parsed.num_replicas)
    work_dir = str(parsed.work_dir) if parsed.work_dir else None
    return deployment.bind(parsed.source, parsed.models, work_dir)
