"""Peak memory of importing, decoding and loading a large model, as a multiple of
its float32 size, above what the same process holds once its libraries are imported.

    python benchmarks/memory.py [--model all-mpnet-base-v2] [--operations import decode stream load search]

Each operation runs in a fresh process; so does its reference, the same imports with nothing
done. The figure is the difference of their peak resident set sizes (``wait4``'s maxrss).
Operations: ``import`` (``jpegweights import huggingface`` of the model's source directory into
a temporary store), ``decode`` (``codec.load_package`` of the served package), ``stream``
(``StreamDecoder`` fed the package in 64 KiB pieces, as the client does), ``load`` (the client's
``PackagedModel.from_package``: decode and build), ``search`` (``jpegweights compress --calibrate
--min-cosine 0.995`` of the float source on the bundled kinds of text, error compensation
included: a quarter of an hour). Needs `make pretrained-large`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from jpegweights.codec import load_manifest

ROOT = Path(__file__).resolve().parents[1]

IMPORTS = {
    "text": (
        "import torch, tokenizers, transformers, jpegweights.cli.main, jpegweights.handlers; "
        "from transformers.models.auto.configuration_auto import model_type_to_module_name as m; import importlib; "
        "t = json.load(open(sys.argv[2] + '/config.json'))['model_type'] if len(sys.argv) > 2 else 'bert'; "
        "importlib.import_module(f'transformers.models.{m(t)}.modeling_{m(t)}')"
    ),
    "codec": "import torch, jpegweights.codec",
}
OPERATIONS = {
    "import": (
        "text",
        "from jpegweights.cli.main import main; "
        "main(['import', 'huggingface', '--store', sys.argv[3], '--name', 'm', sys.argv[2]])",
    ),
    "decode": ("codec", "jpegweights.codec.load_package(sys.argv[1])"),
    "stream": (
        "codec",
        "d = jpegweights.codec.StreamDecoder(); f = open(sys.argv[1], 'rb'); "
        "[d.feed(c) for c in iter(lambda: f.read(65536), b'')]; d.finish()",
    ),
    "load": (
        "text",
        "from jpegweights.client import PackagedModel; PackagedModel.from_package(open(sys.argv[1], 'rb').read())",
    ),
    "search": (
        "text",
        "from jpegweights.cli.main import main; "
        "main(['compress', sys.argv[1].removesuffix('.jpw') + '.safetensors', sys.argv[3] + '/m.jpw', '--calibrate', "
        "'--min-cosine', '0.995', '--cache-dir', sys.argv[3]])",
    ),
}


def peak_kib(code: str, *args: str) -> int:
    """The peak RSS (KiB) of a fresh ``python -c code args``."""
    proc = subprocess.Popen([sys.executable, "-c", "import json, sys; " + code, *args], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{code[:80]}... failed ({status})")
    return usage.ru_maxrss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all-mpnet-base-v2")
    p.add_argument("--operations", nargs="+", default=list(OPERATIONS), choices=list(OPERATIONS))
    p.add_argument("--out", type=Path, help="also write the table as JSON")
    args = p.parse_args()
    package = ROOT / "models" / args.model / "model.jpw"
    source = ROOT / "build" / args.model  # its Hugging Face folder: `make pretrained-large` keeps MPNet's
    float32 = sum(4 * math.prod(e["shape"]) for e in load_manifest(package.read_bytes())["tensors"].values())
    rows = []
    print(f"{args.model}: float32 {float32 / 1e6:.1f} MB; peak RSS above the same process's imports")
    print("| operation | peak above imports MB | × float32 |")
    print("|---|---:|---:|")
    for name in args.operations:
        imports, code = OPERATIONS[name]
        with tempfile.TemporaryDirectory() as tmp:
            argv = (str(package), str(source), tmp)
            base = peak_kib(IMPORTS[imports], *argv)
            peak = peak_kib(f"{IMPORTS[imports]}; {code}", *argv)
        above = (peak - base) * 1024
        rows.append({"operation": name, "peak_above_imports_bytes": above, "times_float32": above / float32})
        print(f"| {name} | {above / 1e6:.0f} | {above / float32:.2f}× |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "float32_bytes": float32, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
