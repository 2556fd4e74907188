"""Loading weights into a network from a run directory, ``.safetensors`` or ``.pt`` file.

Used by the methods that start from given weights (ARREST's ``method.pretrained``,
LBGAT's ``method.teacher_checkpoint``). Loading is safe: safetensors, or ``torch.load``
with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from torch import Tensor, nn

from atzoo.files.common import compare_state_dicts
from atzoo.errors import AtzooError, CheckpointError, brief
from atzoo.files.safe_read import read_json_file, safe_torch_load


def read_state_dict(path: str | Path, *, what: str) -> tuple[dict[str, Tensor], Path]:
    """Reads model weights safely from a run directory, ``.safetensors`` or ``.pt`` file.

    A run directory means its ``model.safetensors``. ``.pt``/``.pth`` files load with
    ``weights_only=True``; a leading ``module.`` (``nn.DataParallel``) is stripped.

    Raises:
        CheckpointError: the path is missing, of an unknown kind, or unreadable.
    """
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"{what}: no model weights at {file} (give a run directory or model.safetensors)")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        elif file.suffix in (".pt", ".pth", ".bin"):
            state = safe_torch_load(file, f"{what}:")
            if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
                state = state.get("state_dict", state.get("model"))
        else:
            raise CheckpointError(f"{what}: {file} is not a .safetensors, .pt or .pth file")
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what}: cannot read {file}: {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{what}: {file} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}, file


def load_weights(module: nn.Module, path: str | Path, *, what: str) -> None:
    """Loads weights into ``module`` after checking that every name and shape matches.

    Raises:
        CheckpointError: one line naming the first mismatch (and the checkpoint's model
            name when its ``model_meta.json`` is present).
    """
    from atzoo.models.timm_models import weights_target

    state, file = read_state_dict(path, what=what)
    module = weights_target(module, state)  # a timm run's model.safetensors holds timm's own keys
    expected = module.state_dict()
    bad = compare_state_dicts(expected, state)
    if bad is not None:
        if bad.wrong_shape:
            k = bad.wrong_shape[0]
            detail = f"'{k}' has shape {list(state[k].shape)}, the model needs {list(expected[k].shape)}"
        else:
            detail = f"{len(bad.missing)} missing and {len(bad.unexpected)} unexpected tensors (e.g. "
            detail += f"'{(bad.missing or bad.unexpected)[0]}')"
        raise CheckpointError(f"{what}: {file} does not match the architecture{_meta_hint(file)}: {detail}")
    module.load_state_dict(state)


def _meta_hint(file: Path) -> str:
    meta = file.parent / "model_meta.json"
    try:
        payload = read_json_file(meta, "model meta") if meta.is_file() else None
    except AtzooError:
        payload = None
    model = payload.get("model") if isinstance(payload, dict) else None
    return f" (it holds a '{brief(model, 40)}' model)" if isinstance(model, str) else ""
