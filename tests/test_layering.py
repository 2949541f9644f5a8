"""The packages' layering, checked by parsing the source (nothing is imported).

- ``codec`` is the bottom layer: no HTTP, no modules (handlers), no service, client, cli or training;
- ``compressed`` (weights kept as JPEG coefficients, and their layers) sits on ``codec``, below
  ``handlers``: no HTTP, no handlers, service, client, cli, training or pipeline;
- ``handlers`` (architectures, pre- and post-processing) sit on ``codec``: no HTTP, no service,
  client, cli or training, so the server, the client and the CLI share them;
- ``service`` (the server) never imports ``client``;
- ``deploy`` (cluster engines: Ray Serve) sits above ``service`` and ``client``: no layer below it
  (every one but ``cli``) imports it, and it imports neither ``cli`` nor ``training``;
- ``client`` never imports ``service`` nor a server framework;
- nothing imports a layer by its bare folder name (``import codec``): the import names are
  ``jpegweights.codec`` and so on, and a bare name would load a second copy of the module
  (with its own exception classes) when run from the repository's root.

Every ``import x``, ``from x import y`` and relative import (resolved to its absolute module:
``from ..service import app`` inside ``client/`` is ``service``), at any depth in the file (in
functions, under ``if TYPE_CHECKING:``), counts, as do ``importlib.import_module("x")`` and
``__import__("x")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "jpegweights"
PACKAGES = ("codec", "compressed", "handlers", "pipeline", "service", "client", "deploy", "cli", "training")
FORBIDDEN: dict[str, frozenset[str]] = {
    "codec": frozenset(
        {
            "compressed",
            "handlers",
            "service",
            "client",
            "cli",
            "training",
            "pipeline",
            "fastapi",
            "starlette",
            "uvicorn",
            "httpx",
            "deploy",
        }
    ),
    "compressed": frozenset(
        {
            "handlers",
            "service",
            "client",
            "cli",
            "training",
            "pipeline",
            "fastapi",
            "starlette",
            "uvicorn",
            "httpx",
            "deploy",
        }
    ),
    "handlers": frozenset(
        {"pipeline", "service", "client", "cli", "training", "fastapi", "starlette", "uvicorn", "httpx", "deploy"}
    ),
    "service": frozenset({"client", "deploy"}),
    "client": frozenset({"service", "fastapi", "uvicorn", "starlette", "deploy"}),
    "pipeline": frozenset(
        {"service", "client", "cli", "training", "fastapi", "starlette", "uvicorn", "httpx", "deploy"}
    ),
    "training": frozenset({"service", "client", "cli", "fastapi", "starlette", "uvicorn", "httpx", "deploy"}),
    "deploy": frozenset({"cli", "training"}),
    "benchmarks": frozenset({"cli"}),  # benchmarks call the library, as the CLI does
}


def _package_parts(relpath: str) -> list[str]:
    """The package a module lives in, as name parts: ``client/a.py`` and ``client/__init__.py`` -> ["client"]."""
    parts = Path(relpath).with_suffix("").parts
    return list(parts[:-1])


def imported_modules(source: str, relpath: str) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in ``source``, the file at ``relpath`` (relative to the root)."""
    tree = ast.parse(source, filename=relpath)
    package = _package_parts(relpath)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module == "jpegweights":  # from jpegweights import codec
                found.extend((node.lineno, f"jpegweights.{alias.name}") for alias in node.names)
                continue
            if node.level == 0:
                found.append((node.lineno, node.module or ""))
                continue
            up = node.level - 1
            if up > len(package):
                found.append(
                    (node.lineno, f"<relative import beyond the top level: {'.' * node.level}{node.module or ''}>")
                )
                continue
            base = package[: len(package) - up]
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:  # from . import x, y: each name may be a module
                found.extend((node.lineno, ".".join([*base, alias.name])) for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def private_imports(source: str, relpath: str) -> list[str]:
    """``from jpegweights.X... import _name`` where X is not the importing file's own package:
    a ``_private`` name is its package's business."""
    layer = Path(relpath).parts[0]
    out = []
    for node in ast.walk(ast.parse(source, filename=relpath)):
        if (
            not isinstance(node, ast.ImportFrom)
            or node.level != 0
            or not (node.module or "").startswith("jpegweights.")
        ):
            continue
        owner = node.module.split(".")[1]
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__") and owner != layer:
                out.append(f"{relpath}:{node.lineno} imports {node.module}.{alias.name} (a private name of {owner})")
    return out


def violations(source: str, relpath: str) -> list[str]:
    """``file:line imports module (rule)`` for each import that breaks the layering."""
    layer = Path(relpath).parts[0]
    forbidden = FORBIDDEN.get(layer, frozenset())
    out = []
    for line, module in imported_modules(source, relpath):
        parts = module.split(".")
        if parts[0] == "jpegweights" and len(parts) > 1:
            top = parts[1]
        elif parts[0] in PACKAGES and layer in ("tests", "benchmarks", "attacks"):
            out.append(f"{relpath}:{line} imports {module} (use jpegweights.{module})")
            continue
        else:
            top = parts[0]
        if top in forbidden:
            out.append(f"{relpath}:{line} imports {module} ({layer} must not import {top})")
    return out + private_imports(source, relpath)


def source_files() -> dict[str, Path]:
    """Every checked file by the path the rules read: ``codec/core.py`` for
    ``src/jpegweights/codec/core.py``, ``tests/...``, ``benchmarks/...`` and ``attacks/...`` as they are."""
    files = {p.relative_to(SRC).as_posix(): p for p in SRC.rglob("*.py")}
    files |= {
        p.relative_to(ROOT).as_posix(): p
        for top in ("tests", "benchmarks", "attacks")
        for p in (ROOT / top).rglob("*.py")
    }
    return dict(sorted(files.items()))


def check_tree() -> list[str]:
    problems = []
    for rel, path in source_files().items():
        problems.extend(violations(path.read_text(encoding="utf-8"), rel))
    return problems


def test_every_package_has_sources():
    files = source_files()
    for pkg in PACKAGES:
        assert any(rel.split("/")[0] == pkg for rel in files), f"no .py files found under src/jpegweights/{pkg}/"


def test_nothing_is_left_at_the_root():
    """The src layout: no package folder outside src/ (the Dockerfile copies src/ alone)."""
    stray = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("tests",))
    assert not stray, f"packages outside src/jpegweights: {stray}"


def test_layering():
    problems = check_tree()
    assert not problems, "layering violations:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize(
    ("relpath", "source", "expected"),
    [
        (
            "client/fake.py",
            "from ..service import app\n",
            ["client/fake.py:1 imports service (client must not import service)"],
        ),
        (
            "client/sub/fake.py",
            "x = 1\nfrom ...service.app import create_app\n",
            ["client/sub/fake.py:2 imports service.app (client must not import service)"],
        ),
        (
            "client/fake.py",
            "from .. import service\n",
            ["client/fake.py:1 imports service (client must not import service)"],
        ),
        (
            "codec/fake.py",
            "def f():\n    import fastapi.responses as r\n",
            ["codec/fake.py:2 imports fastapi.responses (codec must not import fastapi)"],
        ),
        (
            "codec/fake.py",
            "from httpx import Client\n",
            ["codec/fake.py:1 imports httpx (codec must not import httpx)"],
        ),
        (
            "codec/fake.py",
            "import importlib\nimportlib.import_module('jpegweights.training.mnist')\n",
            ["codec/fake.py:2 imports jpegweights.training.mnist (codec must not import training)"],
        ),
        (
            "service/fake.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import jpegweights.client\n",
            ["service/fake.py:3 imports jpegweights.client (service must not import client)"],
        ),
        ("tests/fake.py", "from codec import decode\n", ["tests/fake.py:1 imports codec (use jpegweights.codec)"]),
        (
            "service/fake.py",
            "from jpegweights import client\n",
            ["service/fake.py:1 imports jpegweights.client (service must not import client)"],
        ),
        (
            "client/fake.py",
            "import uvicorn, torch\n",
            ["client/fake.py:1 imports uvicorn (client must not import uvicorn)"],
        ),
        (
            "benchmarks/fake.py",
            "from jpegweights.cli.codec_cmds import load_state_dict\n",
            ["benchmarks/fake.py:1 imports jpegweights.cli.codec_cmds (benchmarks must not import cli)"],
        ),
        (
            "training/fake.py",
            "from jpegweights.cli import main\n",
            ["training/fake.py:1 imports jpegweights.cli (training must not import cli)"],
        ),
        (
            "pipeline/fake.py",
            "from jpegweights.cli.codec_cmds import log\n",
            ["pipeline/fake.py:1 imports jpegweights.cli.codec_cmds (pipeline must not import cli)"],
        ),
        (
            "handlers/fake.py",
            "from jpegweights.pipeline import compress\n",
            ["handlers/fake.py:1 imports jpegweights.pipeline (handlers must not import pipeline)"],
        ),
        (
            "service/fake.py",
            "from jpegweights.deploy.ray import app\n",
            ["service/fake.py:1 imports jpegweights.deploy.ray (service must not import deploy)"],
        ),
        (
            "deploy/fake.py",
            "from ..cli import main\n",
            ["deploy/fake.py:1 imports cli (deploy must not import cli)"],
        ),
        (
            "tests/fake.py",
            "from jpegweights.codec.core import _decode_entry\n",
            ["tests/fake.py:1 imports jpegweights.codec.core._decode_entry (a private name of codec)"],
        ),
    ],
)
def test_the_checker_reports_violations(relpath, source, expected):
    assert violations(source, relpath) == expected


@pytest.mark.parametrize(
    ("relpath", "source"),
    [
        ("codec/fake.py", "import torch\nfrom .errors import CodecError\nfrom . import jpeg\n"),
        (
            "client/fake.py",
            "from jpegweights import codec\nimport httpx\nfrom .errors import CodecError\nfrom . import model\n",
        ),
        ("service/fake.py", "import fastapi\nfrom .routes import v2\nimport jpegweights.codec\n"),
        ("deploy/fake.py", "from jpegweights.service import create_app\nfrom jpegweights.client import Client\n"),
        (
            "cli/fake.py",
            "import jpegweights.service\nfrom jpegweights import client\n",
        ),  # the CLI sits on top of everything
        ("codec/fake.py", "import clientlib\nimport services\n"),  # names that only start like a layer
    ],
)
def test_the_checker_accepts_allowed_imports(relpath, source):
    assert violations(source, relpath) == []
