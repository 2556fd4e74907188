"""Helper for tests/test_distributed.py, started by ``torchrun``: one training run whose
every process also saves the parameters it ends with (``rank<R>.safetensors``).

Usage: ``torchrun --nproc_per_node 2 tests/distributed_train.py OUT METHOD [section.key=value ...]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from atzoo.config import build_config
from atzoo.engine.checkpoint import plain_state_dict
from atzoo.engine.trainer import Trainer, make_accelerator, select_trackers
from atzoo.methods.base import create_method


def main(out: str, method_name: str, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    cfg = build_config(None, overrides, method={"name": method_name})
    run_dir = Path(out)
    method = create_method(method_name, cfg)
    trackers = select_trackers(cfg.run.trackers)
    accelerator = make_accelerator(cfg, run_dir, trackers, method)
    trainer = Trainer(cfg, run_dir, accelerator, method)
    trainer.open_run_dir(force=False, resume=False, trackers=trackers)
    trainer.fit()
    save_file(plain_state_dict(trainer.core), str(run_dir / f"rank{accelerator.process_index}.safetensors"))
    accelerator.wait_for_everyone()
    trainer.finish()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
