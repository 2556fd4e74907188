"""Images per second: atzoo's device-side loader vs a torchvision DataLoader.

    python benchmarks/data_loader.py                       # CIFAR-10 subset, batch 128, CPU
    python benchmarks/data_loader.py --device cuda --workers 0 2 4 --threads 4

The baseline is RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor over PIL
images in a DataLoader (the papers' pipeline); the device-side loader does the same crop
and flip on whole uint8 batches. Both deliver float32 batches in [0, 1] on the device.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from atzoo.data import create_dataset
from atzoo.data.benchmark import format_results, loader_throughput

SHARED = Path(os.environ.get("ATZOO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=f"npz:{SHARED / 'cifar10_subset.npz'}")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=40, help="timed batches per loader")
    # One intra-op thread by default: on a small shared CPU, OpenMP threads competing with
    # other processes spin and slow every tensor op down several-fold.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in the main process")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    bundle = create_dataset(args.dataset)
    results = loader_throughput(bundle, args.batch_size, device=args.device, num_workers=tuple(args.workers),
                                max_batches=args.batches)
    print(f"{args.dataset}: {len(bundle.train)} training images, batch {args.batch_size}, device {args.device}, "
          f"{torch.get_num_threads()} torch threads")
    print(format_results(results))


if __name__ == "__main__":
    main()
