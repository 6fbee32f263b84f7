"""Whole-disk image registration: the client's throughput on a sparse image, per format.

    .venv/bin/python bench/images.py                    # 256 MiB image, 64 MiB of data, SQLite
    .venv/bin/python bench/images.py --database postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/images.py --formats raw,qcow2,gzip,xz,zstd --size-mib 1024 --data-mib 128

Makes a sparse raw image (``--data-mib`` of random data in 4 MiB pieces spread over ``--size-mib``) and
converts it to each format asked for (qcow2 with qemu-img, gzip/xz from the standard library, zstd with
the ``zstd`` program). Then, for each format, against a real ``rhaas-admin serve`` on loopback:

* ``read``: the client alone reading the file as logical chunks and hashing them (no server);
* ``first``: registering it with nothing in the store (every data chunk is uploaded);
* ``again``: registering the same content again (nothing is uploaded: the server has every chunk).

Prints logical MB/s (the image's virtual size over the wall time) and, for ``first``, the uploaded MB/s.
With ``--database`` on PostgreSQL it works in a fresh database it creates and drops.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchdb import database  # bench/ is on sys.path: this file runs as a script

from rhaas.client import Client
from rhaas.client.diskimage import CHUNK_SIZE, open_disk_image
from rhaas.lab.servers import Server

MIB = 2**20


def make_raw(path: Path, size: int, data: int) -> None:
    """A sparse file of ``size`` bytes with ``data`` bytes of random data in chunk-sized pieces spread
    evenly over it."""
    pieces = max(1, data // CHUNK_SIZE)
    stride = size // pieces
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(pieces):
            f.seek(i * stride - (i * stride) % CHUNK_SIZE)
            f.write(os.urandom(min(CHUNK_SIZE, size - f.tell())))


def convert(raw: Path, fmt: str) -> Path:
    if fmt == "raw":
        return raw
    if fmt == "qcow2":
        out = raw.with_suffix(".qcow2")
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True)
        return out
    if fmt == "zstd":
        out = raw.with_suffix(".raw.zst")
        subprocess.run(["zstd", "-q", "-f", "-T0", str(raw), "-o", str(out)], check=True)
        return out
    out = raw.with_suffix(".raw.gz" if fmt == "gzip" else ".raw.xz")
    with open(raw, "rb") as inp, gzip.open(out, "wb") if fmt == "gzip" else lzma.open(out, "wb") as dst:
        shutil.copyfileobj(inp, dst, 4 * MIB)
    return out


def read_only(path: Path) -> float:
    """Seconds the client takes to read and hash the image, with no server."""
    started = time.perf_counter()
    with open_disk_image(path) as source:
        logical = hashlib.sha256()
        offset = 0
        zeros = bytes(CHUNK_SIZE)
        for window in source.windows():
            if window is None:
                window = zeros[: min(CHUNK_SIZE, (source.virtual_size or 0) - offset)]
            elif window != zeros[: len(window)]:
                hashlib.sha256(window).digest()
            logical.update(window)
            offset += len(window)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--data-mib", type=int, default=64)
    parser.add_argument("--formats", default="raw,qcow2")
    parser.add_argument("--database", default=None, help="PostgreSQL admin URL (default: SQLite)")
    args = parser.parse_args()
    size, data = args.size_mib * MIB, args.data_mib * MIB
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="rhaas-bench-images-") as tmp,
        database(args.database, Path(tmp)) as db,
    ):
        work = Path(tmp)
        raw = work / "disk.raw"
        make_raw(raw, size, data)
        server = Server(db, work / "server.log", "--no-worker")
        server.start()
        try:
            with server.client("admin", "adminpw") as admin:
                admin.put("/project/bench").raise_for_status()
            with Client(server.url, "admin", "adminpw", timeout=120) as client:
                for fmt in args.formats.split(","):
                    path = convert(raw, fmt)
                    read_s = read_only(path)
                    first = client.image.register_disk(f"{fmt}-1", path, project="bench")
                    again = client.image.register_disk(f"{fmt}-2", path, project="bench")
                    rows.append(
                        {
                            "format": fmt,
                            "file_mib": round(path.stat().st_size / MIB, 1),
                            "virtual_mib": round(first["virtual_size"] / MIB),
                            "data_chunks": first["chunks"],
                            "read_mb_s": round(size / read_s / 1e6),
                            "first_s": first["seconds"],
                            "first_mb_s": round(size / first["seconds"] / 1e6),
                            "uploaded_mb_s": round(first["uploaded_bytes"] / first["seconds"] / 1e6),
                            "again_s": again["seconds"],
                            "again_mb_s": round(size / again["seconds"] / 1e6),
                            "again_uploaded": again["uploaded_chunks"],
                        }
                    )
                    client.image.delete(f"{fmt}-1")
                    client.image.delete(f"{fmt}-2")
        finally:
            server.stop()
    backend = "postgresql" if db.startswith("postgresql") else "sqlite"
    print(json.dumps({"database": backend, "size_mib": args.size_mib, "data_mib": args.data_mib}))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
