"""The public Python API: load, train, evaluate and compare (re-exported by ``atzoo``).

Each function is the library form of a command (``atzoo train|eval|compare``) and goes
through the same code, so a run trained from Python is the run the CLI would train::

    import atzoo
    run = atzoo.train("at", model="small_cnn", dataset="digits", epochs=1)
    model = atzoo.load(run)                        # nn.Module, eval mode, inputs in [0, 1]
    print(atzoo.evaluate(model, "digits", attacks=["clean", "pgd20"], n_ex=100))
    board = atzoo.compare(["runs"])                # every evaluated run below runs/

See ``docs/api.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atzoo.errors import ConfigError, DataError, brief, one_line
from atzoo.files.paths import check_output_path

#: ``atzoo.train`` keywords that are command-line flags of ``atzoo train``.
TRAIN_FLAGS: tuple[str, ...] = ("model", "dataset", "epochs", "batch_size", "seed", "recipe")


def load(run_dir: str | Path) -> nn.Module:
    """The deployable model of a run: a plain ``nn.Module`` in eval mode, inputs in [0, 1].

    Args:
        run_dir: a run directory (``model.safetensors`` + ``model_meta.json``) or a
            ``.safetensors`` file with its meta JSON beside it.

    Raises:
        CheckpointError: a file is missing or the weights do not fit the recorded model.
    """
    from atzoo.eval.evaluator import load_run_model

    _check_path_argument(run_dir, "run_dir")
    return load_run_model(run_dir)[0]


def _check_path_argument(value: Any, name: str) -> None:
    """Raises ConfigError unless ``value`` is a path (``str`` or ``os.PathLike``)."""
    import os

    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a path (str or pathlib.Path), got a {type(value).__name__}")


def _override(section: str, key: str, value: Any) -> str:
    """``section.key=value`` with the value written as YAML (read back unchanged)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return f"{section}.{key}={text.removesuffix('...').strip()}"


def train_overrides(sections: Mapping[str, Any]) -> list[str]:
    """``{"optim": {"lr": 0.05}, "attack.steps": 1}`` -> ``["optim.lr=0.05", "attack.steps=1"]``.

    Raises:
        ConfigError: a keyword is neither ``section.key`` nor a section mapping.
    """
    from atzoo.config import SECTIONS

    overrides: list[str] = []
    for name, value in sections.items():
        if "." in name:
            section, _, key = name.partition(".")
            overrides.append(_override(section, key, value))
        elif name in SECTIONS and isinstance(value, Mapping):
            overrides += [_override(name, key, v) for key, v in value.items()]
        else:
            raise ConfigError(
                f"unknown keyword '{name}' for atzoo.train: use one of {', '.join(TRAIN_FLAGS)}, out, force, "
                f"resume, overrides, a section mapping ({', '.join(SECTIONS)}), or **{{'section.key': value}}"
            )
    return overrides


def train(
    method: str,
    *,
    out: str | Path | None = None,
    force: bool = False,
    resume: bool = False,
    overrides: Sequence[str] = (),
    **fields: Any,
) -> Path:
    """Trains ``method`` exactly as ``atzoo train`` would; returns the run directory.

    Args:
        method: a registered method (``atzoo.list_methods()``).
        out: the run directory (default ``runs/<name>``, as the CLI).
        force: replace an existing run directory.
        resume: continue the run in ``out`` (or the default directory) from its config.
        overrides: ``section.key=value`` strings, as on the command line.
        **fields: the flags of ``atzoo train`` (``model``, ``dataset``, ``epochs``,
            ``batch_size``, ``seed``, ``recipe``), section mappings
            (``optim={"lr": 0.05}``) or dotted keys (``**{"attack.steps": 1}``).

    Raises:
        AtzooError: bad configuration or run directory (nothing written), or a failed run.
    """
    from atzoo.engine.plan import plan_run, run_plan

    flags = {k: fields.pop(k) for k in TRAIN_FLAGS if k in fields}
    recipe = flags.pop("recipe", None)
    extra = train_overrides(fields)
    plan = plan_run(method, recipe=recipe, overrides=[*overrides, *extra], out=out, resume=resume, **flags)
    return run_plan(plan, force=force)


# --------------------------------------------------------------------------- evaluate


def attack_names(attacks: str | Sequence[str]) -> list[str]:
    """``"clean,pgd20"`` or ``["clean", "pgd20"]`` -> ``["clean", "pgd20"]`` (as ``--attacks``).

    Raises:
        ConfigError: ``attacks`` is neither a comma-separated string nor a sequence of names.
    """
    if isinstance(attacks, str):
        names = [a.strip() for a in attacks.split(",") if a.strip()]
    elif isinstance(attacks, Sequence) and all(isinstance(a, str) for a in attacks):
        names = [a.strip() for a in attacks]
    else:
        wrong = next((a for a in attacks if not isinstance(a, str)), attacks) if isinstance(attacks, Sequence) else attacks
        raise ConfigError(f"attacks must be attack names, as a list or comma-separated string like "
                          f"'clean,pgd20', got {brief(wrong)} ({type(wrong).__name__})")
    if not names:
        raise ConfigError("attacks names no attack; e.g. attacks='clean,pgd20'")
    return names


def _check_model(model: Any) -> None:
    """Raises ConfigError unless ``model`` is an ``nn.Module`` (a run's path is loaded with atzoo.load)."""
    if isinstance(model, nn.Module):
        return
    hint = f"; for a run directory use atzoo.load({brief(str(model))})" if isinstance(model, (str, Path)) else ""
    raise ConfigError(f"model must be a torch nn.Module mapping images in [0, 1] to logits, got a "
                      f"{type(model).__name__}{hint}")


def _as_dataset(data: Any) -> torch.utils.data.Dataset:
    """A ``Dataset`` of ``(image in [0, 1], label)`` from a Dataset, a DataLoader or batches."""
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    usage = ("give a dataset name, a DatasetBundle, a Dataset or DataLoader of (image, label), or a list of "
             "(images, labels) batches; for tensors, TensorDataset(images, labels)")
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return data
    if isinstance(data, (torch.Tensor, bytes, Mapping)) or not isinstance(data, Iterable):
        raise DataError(f"data: cannot evaluate on a {type(data).__name__}; {usage}")
    batches = list(data)
    if not batches:
        raise DataError("data holds no batches")
    if not all(isinstance(b, (tuple, list)) and len(b) == 2 for b in batches):
        raise DataError(f"data: each batch must be an (images, labels) pair; {usage}")
    try:
        xs, ys = zip(*batches)
        return TensorDataset(torch.cat([torch.as_tensor(x) for x in xs]), torch.cat([torch.as_tensor(y) for y in ys]))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"data: the batches do not stack into images and labels ({one_line(exc, 120)}); "
                        f"{usage}") from None


def _bundle_of(model: nn.Module, data: Any, n_ex: int | None) -> Any:
    """The :class:`~atzoo.data.DatasetBundle` to evaluate on, holding the first ``n_ex`` examples."""
    from atzoo.data import DatasetBundle, create_dataset
    from atzoo.data.bundle import head

    if isinstance(data, str):
        return create_dataset(data, test_subset=n_ex)
    if isinstance(data, DatasetBundle):
        return data.subset(test=n_ex)
    dataset = head(_as_dataset(data), n_ex, "n_ex")
    if len(dataset) == 0:
        raise DataError("the data to evaluate holds no examples")
    image = torch.as_tensor(dataset[0][0])
    if image.dim() != 3:
        raise DataError(f"each image must be a (C, H, W) tensor in [0, 1], got shape {tuple(image.shape)}")
    with torch.no_grad():
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        num_classes = int(model.eval()(image[None].float().to(device)).shape[1])
    channels = image.shape[0]
    return DatasetBundle(
        name=type(dataset).__name__, num_classes=num_classes, in_channels=channels, image_size=image.shape[-1],
        classes=[str(i) for i in range(num_classes)], mean=(0.5,) * channels, std=(0.25,) * channels,
        train=dataset, test=dataset,
    )


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    attacks: Sequence[str] = ("clean", "pgd20"),
    eps: float | str = 8 / 255,
    norm: str = "linf",
    n_ex: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Robust accuracy of ANY classifier that takes images in [0, 1].

    The representation invariance (AR-AT's cosine of clean and PGD-20 features) is
    measured only when the model exposes penultimate features (an atzoo or timm model);
    for any other ``nn.Module`` it is ``None``.

    Args:
        model: the classifier (its device is used; eval mode during the evaluation).
        data: a dataset name (``"digits"``, ``"cifar10"``, ``"npz:PATH"``), a
            :class:`~atzoo.data.DatasetBundle`, a ``Dataset`` or ``DataLoader`` of
            ``(image in [0, 1], label)``, or an iterable of ``(images, labels)`` batches.
        attacks: ``clean``, ``pgd<N>``, ``fgsm``, ``fgsm_rs``, ``aa`` (AutoAttack), as a list or
            a comma-separated string (``"clean,pgd20"``).
        eps: the radius (``8/255`` or ``"8/255"``).
        norm: ``linf`` or ``l2``.
        n_ex: evaluate on the first ``n_ex`` test examples only (every attack).
        batch_size: examples per batch.
        seed: seed of the random starts and of AutoAttack.
        progress: show progress bars.
        out: a folder to write (or update) ``eval.json`` in (an existing file is refused).

    Returns:
        The ``eval.json`` payload: ``clean_acc``, ``pgd20_acc``, ``autoattack_acc``, ... in percent.

    Raises:
        AtzooError: each naming the argument and what it accepts: ``model`` not an
            ``nn.Module`` (or with non-finite weights), an unknown attack, a bad radius,
            norm, ``n_ex`` or ``batch_size``, unusable ``data``, ``out`` that is a file.
    """
    from atzoo.config import AttackConfig, EvalConfig, coerce
    from atzoo.eval import evaluate as run_evaluation
    from atzoo.eval.evaluator import check_finite_model

    _check_model(model)
    names = attack_names(attacks)
    if n_ex is not None and (isinstance(n_ex, bool) or not isinstance(n_ex, int) or n_ex < 1):
        raise ConfigError(f"n_ex must be a positive integer or None, got {brief(n_ex)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {brief(batch_size)}")
    radius = coerce(eps, float, "eps")
    if out is not None:
        check_output_path(out, "out", directory=True)
    check_finite_model(model, "model")
    cfg = EvalConfig(attacks=names, norm=norm, eps=radius, n_ex=None, batch_size=batch_size)  # type: ignore[arg-type]
    bundle = _bundle_of(model, data, n_ex)
    return run_evaluation(model, bundle, cfg, attack_cfg=AttackConfig(norm=norm, eps=radius),  # type: ignore[arg-type]
                          progress=progress, out=out, seed=seed)


# --------------------------------------------------------------------------- compare


def compare(
    runs: str | Path | Sequence[str | Path], *, out: str | Path | None = None, paper: bool = False,
) -> Any:
    """The leaderboard of evaluated runs (folders are searched for run directories).

    Args:
        runs: run directories, or folders holding them (searched recursively); runs
            without ``eval.json`` are skipped with a warning.
        out: a folder to write the leaderboard files into (``None``: write nothing).
        paper: add the papers' reported numbers as reference rows.

    Returns:
        The :class:`~atzoo.report.Leaderboard` (``board.groups[i].entries``).
    """
    import warnings

    from atzoo.report import compare as run_compare

    paths = [runs] if isinstance(runs, (str, Path)) else list(runs) if isinstance(runs, Sequence) else [runs]
    for path in paths:
        _check_path_argument(path, "runs")
    if out is not None:
        _check_path_argument(out, "out")
        check_output_path(out, "out", directory=True)
    board = run_compare(paths, out=out, paper=paper)[0]
    if board.skipped:
        warnings.warn(f"skipped {len(board.skipped)} run(s) without eval.json: "
                      f"{', '.join(str(p) for p in board.skipped)}", stacklevel=2)
    return board
