"""The LitServe peer of benchmarks/serve.py: one model served by LitServe with its own dynamic
batching, through the same jpegweights handler (so the same pre- and post-processing and the
same answers), taking the same JSON bodies on ``POST /predict``.

    .venv-litserve/bin/python benchmarks/litserve_peer.py --model mobilenet_v2 --port 8200

It runs in its own venv (``make bench-deps``: litserve pins other versions of FastAPI and
uvicorn than ours). Ready when ``GET /health`` answers 200.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import litserve as ls

ROOT = Path(__file__).resolve().parents[1]


class HandlerAPI(ls.LitAPI):
    def __init__(self, model: str, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def setup(self, device: str) -> None:
        from jpegweights import handlers
        from jpegweights.codec import load_package

        state, manifest = load_package(ROOT / "models" / self.model / "model.jpw")
        self.handlers = handlers
        self.handler = handlers.load(manifest, state, "cpu", min_rows=16 if self.model.startswith("mnist") else 1)

    def decode_request(self, request: dict):
        from jpegweights.service.inputs import predict_request
        from jpegweights.service.schemas import PredictRequest

        return self.handler.decode_request(
            predict_request(PredictRequest.model_validate(request), self.handler.options)
        )

    def batch(self, inputs: list):
        self.sizes = [self.handlers.rows(x) for x in inputs]
        return self.handlers.collate(inputs)

    def predict(self, x):
        return self.handler.run(x)

    def unbatch(self, output) -> list:
        return self.handlers.split(output, self.sizes)

    def encode_response(self, output) -> dict:
        return self.handler.encode_response(output, self.handlers.Request())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, default=8200)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-timeout", type=float, default=0.0)
    args = p.parse_args()
    api = HandlerAPI(args.model, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(
        port=args.port, generate_client_file=False, log_level="warning"
    )  # no access log, as ours


if __name__ == "__main__":
    main()
