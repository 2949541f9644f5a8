"""Server settings: environment variables with the ``JPEGWEIGHTS_`` prefix, or keyword arguments.

>>> Settings(model_dir="models", max_batch_size=32)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jpegweights import cpus, files


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JPEGWEIGHTS_", protected_namespaces=())

    model_dir: Path = Field(Path("models"), description="the model store: one folder per model")
    cache_dir: Path = Field(
        default_factory=lambda: files.cache_dir("server"), description="where packages at other qualities are cached"
    )
    cache_max_bytes: int = Field(
        1 << 30, ge=0, description="the qualities cache's cap: the least recently served files are removed beyond it"
    )
    encode_workers: int = Field(1, ge=1, description="encodes of other qualities that run at once")
    encode_queue: int = Field(
        4, ge=0, description="encodes of other qualities that may wait for a turn; beyond them a request gets 503"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    default_model: str = Field("mnist-mlp", description="the model /predict uses when the request names none")
    batching: bool = True
    max_batch_size: int = Field(64, ge=1, description="the cap: each model's own limit is measured at load, up to this")
    max_wait_ms: float = Field(0.0, ge=0, description="0: a batch is whatever queued while the previous pass ran")
    inference_workers: int = Field(
        default_factory=cpus.available,
        ge=1,
        description=(
            "forward passes one model runs at once, each on its own thread: by default the CPUs this process may "
            "use (its affinity, capped by its cgroup's CPU quota)"
        ),
    )
    torch_threads: int = Field(
        1,
        ge=1,
        description=(
            "intra-op threads of each forward pass. One, with a pass per CPU: threads of one pass wait on each "
            "other at every layer, and on a CPU shared with other work they wait for the others' turns"
        ),
    )
    runtime: Literal["auto", "eager", "onnxruntime"] = Field(
        "auto",
        description=(
            "what runs the forward passes: 'auto' is ONNX Runtime, from a graph exported at load from the decoded "
            "weights, for CPU models where it is installed, else eager PyTorch. A model that cannot run on ONNX "
            "Runtime falls back to eager PyTorch, with a runtime_fallback log line and the reason in /models"
        ),
    )
    min_forward_rows: int = Field(
        16, ge=1, description="forward passes are padded to this many rows, so answers do not depend on batch size"
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_samples: int = Field(1024, ge=1)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    max_request_pixels: int = Field(
        4 * 4096 * 4096, ge=1, description="all the images of one request, counted before any is decoded"
    )
    max_tokens: int = Field(
        32_768, ge=1, description="all the texts of one request, in tokens after truncation (128 texts of 256)"
    )
    tokenize_timeout_s: float = Field(
        5.0, gt=0, description="one request's tokenizing, in a process per text model, is stopped after this (413)"
    )
    request_timeout_s: float = Field(30.0, gt=0)
    keep_alive_s: int = Field(
        75, ge=1, description="how long an idle connection stays open: longer than clients keep theirs"
    )
    token: str | None = Field(
        None,
        description="if set, every endpoint but the health probes and the docs needs 'Authorization: Bearer <token>'",
    )
    protect_metrics: bool = Field(
        False, description="with a token, /metrics and /stats (the web page's live figures) need it too"
    )
    admin_token: str | None = Field(
        None,
        description=(
            "model management (upload, delete, load, unload, rescan) needs it; without it management is off. "
            "Also valid wherever the token is"
        ),
    )
    send_stall_s: float = Field(
        60.0,
        gt=0,
        description=(
            "a /weights download whose client takes no bytes for this long is cut off, and the file it held freed "
            "(nginx's send_timeout): a reader may be slow, not stalled"
        ),
    )
    max_upload_bytes: int = Field(1 << 30, ge=1024, description="largest package accepted by PUT /models/{name}")
    upload_timeout_s: float = Field(
        600.0, gt=0, description="an upload's whole body must arrive within this (408); uploads run one at a time"
    )
    trust_code: bool = Field(
        False,
        description=(
            "let packages in the model store name code (a 'python' architecture, a handler class) to import and run. "
            "Only for a store whose files you trust; uploads never run code"
        ),
    )
    log_requests: bool = True
    compressed_domain: Literal["off", "auto", "all"] = Field(
        "off",
        description=(
            "run Linear and 1x1 conv layers from their weights' JPEG coefficients, which stay in memory instead of "
            "dense weights: 'auto' where that pays (at most 1/8 of the float32 bytes), 'all' wherever possible. "
            "A model's model.json can set its own"
        ),
    )

    @field_validator("token", "admin_token")
    @classmethod
    def _token_not_empty(cls, token: str | None) -> str | None:
        if token is not None and not token.strip():
            raise ValueError("token is set but empty: unset it to serve without a token, or give a real one")
        return token

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device
