"""Benchmark: how fast artifact-signer hashes models, next to its anchors, in one run.

    uv run python benchmarks/artifact_signer.py [--scale 1.0] [--repeat 3] [--dir /tmp]

Three data sets are written to a temporary folder (removed at the end): a ~1 GB model folder
of four large files plus 2,000 small ones, one 1 GB file, and 2,000 small files alone. Every
figure is warm (the page cache holds the data: each set is read once before timing) and the
best of `--repeat` runs. Columns:

- hashlib x1: Python's hashlib SHA-256 on one thread, 1 MiB reads: the single-core anchor;
- cores x hashlib: that figure times the CPU count: what perfect scaling would reach;
- mlwarden files / shards: `oms.hash_model` in OMS `files` mode (interoperable bundles) and in
  `shards` mode (64 MiB shards: one large file is hashed on every core);
- hash, then scan: artifact-signer's judge before issue 12 (`hash_model`, then `scan_path`
  reads every file a second time);
- read once: hash+scan: `intake.inspect_model`, what judge does now (issue 12): one read per
  file, digest and scan of the same bytes (files over 64 MiB go through a private copy);
- model-signing files / shards: the reference `model_signing` 1.1.1 hashing with its defaults
  (files mode; shards mode with its 1 GB shard), when it is installed.

Ratios are against model-signing (files, its default) and against cores x hashlib.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _table import best_of

from services.artifact_signer.intake import inspect_model
from services.artifact_signer.oms import Serialization, hash_model
from services.artifact_signer.scanner import scan_path

MiB = 1024 * 1024
SMALL_FILES = 2000


def _write(path: Path, size: int, block: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        left = size
        counter = 0
        while left > 0:
            n = min(left, len(block))
            # A counter per block: no two blocks (nor files) share content.
            fh.write(counter.to_bytes(8, "little") + block[8:n])
            counter += 1
            left -= n


def make_sets(base: Path, scale: float) -> dict[str, Path]:
    """Write the three data sets under `base`."""
    block = os.urandom(4 * MiB)
    rng = _Lcg(5)
    small_sizes = [1024 + rng.next() % (63 * 1024) for _ in range(SMALL_FILES)]
    large = int((1024 * MiB - sum(small_sizes)) * scale) // 4
    folder = base / "model-folder"
    for i in range(4):
        _write(folder / f"model-{i:05d}-of-00004.safetensors", large, block)
    for i, size in enumerate(small_sizes):
        _write(folder / "tokenizer" / f"{i // 100:02d}" / f"piece-{i:04d}.json", size, os.urandom(size + 8))
    _write(base / "one-file" / "model.bin", int(1024 * MiB * scale), block)
    for i, size in enumerate(small_sizes):
        _write(base / "small-files" / f"{i // 100:02d}" / f"f-{i:04d}.bin", size, os.urandom(size + 8))
    return {"model folder": folder, "one 1 GB file": base / "one-file", "2,000 small files": base / "small-files"}


class _Lcg:
    def __init__(self, seed: int) -> None:
        self.state = seed

    def next(self) -> int:
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) % 2**64
        return self.state >> 33


def files_of(root: Path) -> list[Path]:
    """Every regular file under `root`, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def hashlib_single(root: Path) -> None:
    """The anchor: one thread, 1 MiB reads into one buffer, SHA-256 per file."""
    buffer = bytearray(MiB)
    view = memoryview(buffer)
    for path in files_of(root):
        digest = hashlib.sha256()
        with path.open("rb", buffering=0) as fh:
            while n := fh.readinto(view):
                digest.update(view[:n])
        digest.hexdigest()


def main() -> None:
    """Write the data, time every method, print the table, clean up."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="size of the large files (1.0 = 1 GB)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the temporary data")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    ms_hashing: Any = None
    with contextlib.suppress(ImportError):
        import model_signing.hashing as ms_hashing

    base = Path(tempfile.mkdtemp(prefix="mlw-bench-", dir=args.dir))
    try:
        print(f"writing data sets under {base} ...", flush=True)
        sets = make_sets(base, args.scale)
        print(f"{cores} cores; warm page cache; best of {args.repeat}\n")
        header = (
            f"{'data set':18} {'method':22} {'seconds':>8} {'MB/s':>8} {'files/s':>9}"
            f" {'vs m-s files':>12} {'vs cores x1':>11}"
        )
        print(header)
        print("-" * len(header))
        for label, root in sets.items():
            size = sum(p.stat().st_size for p in files_of(root))
            count = len(files_of(root))
            hashlib_single(root)  # warm the page cache
            methods: list[tuple[str, Callable[[], object]]] = [
                ("hashlib x1", lambda r=root: hashlib_single(r)),  # type: ignore[misc]
                ("mlwarden files", lambda r=root: hash_model(r, Serialization())),  # type: ignore[misc]
                (
                    "mlwarden shards 64MiB",
                    lambda r=root: hash_model(r, Serialization(method="shards", shard_size=64 * MiB)),  # type: ignore[misc]
                ),
                # What artifact-signer's judge did before issue 12: hash, then read again to scan.
                ("hash, then scan", lambda r=root: (hash_model(r, Serialization()), scan_path(r))),  # type: ignore[misc]
                # What it does now: each file read once, hashed and scanned from the same bytes.
                ("read once: hash+scan", lambda r=root: inspect_model(r)),  # type: ignore[misc]
            ]
            if ms_hashing is not None:
                methods.append(("model-signing files", lambda r=root: ms_hashing.Config().hash(r)))  # type: ignore[misc]
                methods.append(
                    (
                        "model-signing shards",
                        lambda r=root: ms_hashing.Config().use_shard_serialization().hash(r),  # type: ignore[misc]
                    )
                )
            times = {name: best_of(args.repeat, fn)[1] for name, fn in methods}
            anchor_cores = times["hashlib x1"] / cores  # perfect scaling of the single-thread figure
            reference = times.get("model-signing files")
            timed = list(times.items())
            rows = [timed[0], ("cores x hashlib", anchor_cores), *timed[1:]]
            for name, seconds in rows:
                vs_ms = f"{reference / seconds:11.2f}x" if reference else "          -"
                vs_cores = f"{anchor_cores / seconds:10.2f}x"
                print(
                    f"{label:18} {name:22} {seconds:8.3f} {size / seconds / 1e6:8.0f} {count / seconds:9.0f}"
                    f" {vs_ms:>12} {vs_cores:>11}"
                )
            print()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
