"""Mixed loader with a 1M-image extra set on disk: images per second and peak memory.

    python benchmarks/extra_loader.py                      # 1M images (3 GB) under /tmp, deleted after
    python benchmarks/extra_loader.py --rows 200000 --keep # a smaller set, kept for another run

Writes a synthetic extra set (``image.npy`` uint8 1M x 32 x 32 x 3 and ``label.npy``,
shifted copies of the CIFAR-10 subset, written chunk by chunk so the writer never holds
it), then measures, each in a fresh process so that peak RSS belongs to one loader:

* ``plain``: the device-side loader over the CIFAR subset alone;
* ``mixed``: the same subset mixed at ``--fraction`` (0.7, as Gowal et al. 2021 and Wang
  et al. 2023) with the extra set, rows read with ``os.pread`` (:mod:`atzoo.data.extra`).

Peak RSS is ``VmHWM`` of the measuring process (imports, the CIFAR subset and the loader
included). Just after writing, much of the file is in the kernel's page cache: the reads
measured are those of a warm cache (the case of a machine whose RAM holds the set; a set
larger than RAM reads from the disk at its random-read speed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("ATZOO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CHUNK = 20_000  # rows written at a time (60 MB)


def write_extra(folder: Path, rows: int, source: Path) -> None:
    """``image.npy`` + ``label.npy`` of ``rows`` rows, written chunk by chunk."""
    with np.load(source) as data:
        x, y = data["x_train"], data["y_train"].astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.empty(rows, dtype=np.int64)
    with open(folder / "image.npy", "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (rows, *x.shape[1:])})
        for start in range(0, rows, CHUNK):
            count = min(CHUNK, rows - start)
            pick = (np.arange(start, start + count) * 7919) % len(x)
            chunk = np.roll(x[pick], shift=(start // CHUNK) % 5, axis=2)  # shifted copies: not all equal
            handle.write(np.ascontiguousarray(chunk).tobytes())
            labels[start:start + count] = y[pick]
    np.save(folder / "label.npy", labels)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    """Images per second over ``args.batches`` batches (after 3 warm-up batches)."""
    import torch

    from atzoo.data import create_dataset, make_train_loader
    from atzoo.data.extra import attach_extra

    torch.set_num_threads(1)
    bundle = create_dataset(f"npz:{args.source}")
    if kind == "mixed":
        bundle = attach_extra(bundle, f"npy:{folder}")
    loader = make_train_loader(bundle, args.batch_size, device="cpu", seed=0, extra_fraction=args.fraction)
    rss_before = peak_rss_mb()
    images, seconds, epoch = 0, 0.0, 0
    warm = 3
    while images < args.batches * args.batch_size:
        loader.set_epoch(epoch)
        iterator = iter(loader)
        start = time.perf_counter()
        for x, _ in iterator:
            if warm:
                warm -= 1
                start = time.perf_counter()
                continue
            images += len(x)
            if images >= args.batches * args.batch_size:
                break
        seconds += time.perf_counter() - start
        epoch += 1
    return {"images_per_s": images / seconds, "images": images, "peak_rss_mb": peak_rss_mb(),
            "rss_before_loop_mb": rss_before, "extra_rows": len(bundle.extra) if bundle.extra is not None else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--fraction", type=float, default=0.7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=300, help="timed batches per loader")
    parser.add_argument("--source", type=Path, default=SHARED / "cifar10_subset.npz")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the set (default: a new /tmp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the set afterwards")
    parser.add_argument("--measure", choices=["plain", "mixed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.dir, args)))
        return
    folder = args.dir or Path(tempfile.mkdtemp(prefix="atzoo-extra-bench-", dir="/tmp"))
    try:
        if not (folder / "image.npy").is_file():
            start = time.perf_counter()
            write_extra(folder, args.rows, args.source)
            size = (folder / "image.npy").stat().st_size / 2**30
            print(f"wrote {args.rows} images ({size:.2f} GiB) to {folder} in {time.perf_counter() - start:.0f} s")
        results = {}
        for kind in ("plain", "mixed"):
            command = [sys.executable, __file__, "--measure", kind, "--dir", str(folder), "--source", str(args.source),
                       "--batch-size", str(args.batch_size), "--batches", str(args.batches),
                       "--fraction", str(args.fraction)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[kind] = json.loads(out.strip().splitlines()[-1])
        print(f"batch {args.batch_size}, fraction {args.fraction}, {args.batches} timed batches, 1 torch thread, CPU")
        print(f"{'loader':<8} {'images/s':>10} {'peak RSS MB':>12} {'RSS before loop MB':>19}")
        for kind, r in results.items():
            print(f"{kind:<8} {r['images_per_s']:>10.0f} {r['peak_rss_mb']:>12.0f} {r['rss_before_loop_mb']:>19.0f}")
        print(json.dumps(results))
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
