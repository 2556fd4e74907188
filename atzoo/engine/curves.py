"""``curves.png``: the training curves of one or several runs, from their metrics.jsonl.

Three panels over epochs: the training loss; accuracies (the running training accuracy on
the training inputs, and, where ``eval.val_every`` was on, clean and PGD accuracy on the
held-out validation images and on the fixed training probe -- the curves in which robust
overfitting shows, Rice et al. 2020, Fig. 1); the learning rate. One colour per run.

matplotlib is imported when a figure is drawn (it is slow to import); the object API
with the Agg canvas never touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from atzoo.files.rundir import read_metrics
from atzoo.files.text import fit_title

#: Accuracy series (percent) drawn in the middle panel: row key -> (label, line style).
ACCURACY_SERIES: dict[str, tuple[str, str]] = {
    "train_acc": ("train (running)", ":"),
    "train_clean_acc": ("train clean", "--"),
    "train_robust_acc": ("train robust", "-."),
    "val_clean_acc": ("val clean", "-"),
    "val_robust_acc": ("val robust", "-"),
    "val_fgsm_acc": ("val FGSM", "--"),
    "co_fgsm_acc": ("probe FGSM", "--"),
    "co_pgd_acc": ("probe PGD", "-"),
}


def run_curves(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch series of a run: ``loss``, ``lr``, the accuracies of :data:`ACCURACY_SERIES`.

    Epoch numbers are 1-based (the epoch just finished); partial epochs are skipped and,
    after a resume, the last row of an epoch wins.
    """
    series: dict[str, dict[int, float]] = {}
    if not (Path(run_dir) / "metrics.jsonl").is_file():
        return {}  # e.g. a run directory holding only an evaluated model
    for row in read_metrics(run_dir):
        if row.get("kind") == "epoch" and not row.get("partial"):
            values = {"loss": row.get("loss"), "lr": row.get("lr"),
                      "train_acc": _pct(row.get("train_acc"))}
        elif row.get("kind") == "val":
            values = {k: row.get(k) for k in ACCURACY_SERIES if k != "train_acc" and not k.startswith("co_")}
        elif row.get("kind") == "co":  # the catastrophic-overfitting check (atzoo/engine/overfit.py)
            values = {"co_flagged": 1.0 if row.get("flagged") else None}
            if row.get("on") != "validation":  # validation rows already carry these accuracies
                values.update(co_fgsm_acc=row.get("fgsm_acc"), co_pgd_acc=row.get("pgd_acc"))
        else:
            continue
        for key, value in values.items():
            if isinstance(value, (int, float)):
                series.setdefault(key, {})[int(row["epoch"]) + 1] = float(value)
    return {key: sorted(points.items()) for key, points in series.items()}


def _pct(value: Any) -> Any:
    return 100.0 * value if isinstance(value, (int, float)) else value


def run_title(name: str, cfg: Any) -> str:
    """``NAME · METHOD · MODEL on DATASET · L-inf eps=8/255 (PGD-10 in training)``: what
    the curves are of, on the figure itself (a shared PNG loses its folder name)."""
    from atzoo.config.threat import format_eps

    attack = cfg.attack
    norm = "L-inf" if attack.norm == "linf" else "L2"
    steps = f" ({attack.name.upper()}-{attack.steps} in training)" if getattr(attack, "steps", None) else ""
    if cfg.method.name == "standard":
        steps = " (no attack in training)"
    return (f"{name} · {cfg.method.name} · {cfg.model.name} on {cfg.data.name} · "
            f"{norm} eps={format_eps(attack.eps)}{steps}")


def plot_curves(runs: dict[str, dict[str, list[tuple[int, float]]]], title: str | None = None) -> bytes:
    """PNG bytes of :func:`curves_plot` (100 dpi)."""
    buffer = io.BytesIO()
    curves_plot(runs, title).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def curves_plot(runs: dict[str, dict[str, list[tuple[int, float]]]], title: str | None = None) -> Any:
    """The three panels for ``{label: run_curves(...)}``, ``title`` above them.

    Epoch ticks are whole numbers; the learning rate is drawn as the step function it is
    (each epoch's rate held over that epoch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(15, 4.6 if title else 4.2))
    FigureCanvasAgg(fig)
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    for colour, (label, curves) in enumerate(runs.items()):
        tint = f"C{colour % 10}"
        _line(loss_ax, curves.get("loss"), tint, "-", label)
        for index, (key, (name, style)) in enumerate(ACCURACY_SERIES.items()):
            # One run: a colour per series; several: a colour per run, a line style per series.
            series_tint = tint if len(runs) > 1 else f"C{index % 10}"
            _line(acc_ax, curves.get(key), series_tint, style, f"{label}: {name}" if len(runs) > 1 else name,
                  bold=key == "val_robust_acc")
        _lr_steps(lr_ax, curves.get("lr"), tint, label)
        for index, (epoch, _) in enumerate(curves.get("co_flagged") or []):
            acc_ax.axvline(epoch, color="red", alpha=0.6, linewidth=1.5,
                           label="catastrophic overfitting" if index == 0 else None)
    for ax, heading in ((loss_ax, "training loss"), (acc_ax, "accuracy (%)"), (lr_ax, "learning rate")):
        ax.set_title(heading)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:

        fig.suptitle(fit_title(title, 15, 11), fontsize=11)
    for ax in (acc_ax, loss_ax) if len(runs) > 1 else (acc_ax,):
        if ax.get_legend_handles_labels()[0]:  # nothing drawn yet (no finished epoch): no legend
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _line(ax: Any, points: list[tuple[int, float]] | None, colour: str, style: str, label: str,
          bold: bool = False) -> None:
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, style, color=colour, marker="o", markersize=3, linewidth=2.2 if bold else 1.2, label=label)


def _lr_steps(ax: Any, points: list[tuple[int, float]] | None, colour: str, label: str) -> None:
    """The learning rate per epoch as steps: epoch k's rate over (k-1, k]."""
    if points:
        xs, ys = zip(*points)
        ax.plot([xs[0] - 1, *xs], [ys[0], *ys], drawstyle="steps-pre", color=colour, linewidth=1.4, label=label)
        ax.set_ylim(bottom=0)


def write_compare_curves(run_dirs: list[Path], out: str | Path) -> Path:
    """``out/curves.png`` with the curves of every run (labelled by the run directory's name)."""
    from atzoo.files.common import atomic_write_bytes

    labels: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run_dir in run_dirs:
        label = Path(run_dir).name
        while label in labels:  # two runs with one folder name: keep both
            label += "'"
        labels[label] = run_curves(run_dir)
    target = Path(out) / "curves.png"
    atomic_write_bytes(target, plot_curves(labels))
    return target
