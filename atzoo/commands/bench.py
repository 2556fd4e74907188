"""``atzoo bench step-cost | eval | data``: training cost per method, PGD throughput, loaders.

Examples::

    atzoo bench step-cost --model resnet18 --batch-size 32 --device cpu --json step_cost.json
    atzoo bench step-cost --device cuda --batch-size 128 --precision bf16 --channels-last
    atzoo bench eval --model resnet18 --batch-size 128 --device cuda
    atzoo bench data --dataset npz:cifar10_subset.npz --batch-size 128
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from atzoo.errors import AtzooError
from atzoo.files.paths import check_output_path

bench_app = typer.Typer(
    help="Benchmarks: training step cost of every method relative to AT, PGD throughput, data loading.",
    no_args_is_help=True,
)


# --------------------------------------------------------------------------- helpers


def parse_list(text: str | None) -> tuple[str, ...]:
    """``"at, trades"`` -> ``("at", "trades")`` (empty for None or blank)."""
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """``"0,2"`` -> ``(0, 2)``; AtzooError naming ``option`` otherwise."""
    try:
        values = tuple(int(p) for p in parse_list(text))
    except ValueError:
        raise AtzooError(f"{option} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise AtzooError(f"{option} expects comma-separated integers >= 0, got {text!r}")
    return values


def check_json_path(path: Path | None) -> None:
    """Refuses a ``--json`` path that cannot be written as a file (before any measurement)."""
    if path is not None and path.is_dir():
        raise AtzooError(f"--json {path} is a directory; give a file name such as {path / 'results.json'}")
    if path is not None:
        check_output_path(path, "--json", directory=False)


def write_json(path: Path | None, payload: dict[str, Any], console: Console) -> None:
    """Writes the results atomically (creating the parent folder)."""
    if path is None:
        return
    from atzoo.engine.checkpoint import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, payload)
    console.print(f"wrote {path}", highlight=False)


class _Bar:
    """A transient rich progress bar on stderr fed by ``progress(description, done, total)``."""

    def __init__(self, title: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn(f"{title} {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self._task: Any = None

    def __enter__(self) -> Callable[[str, int, int], None]:
        self._progress.__enter__()

        def update(description: str, done: int, total: int) -> None:
            if self._task is None:
                self._task = self._progress.add_task(description, total=total)
            self._progress.update(self._task, description=description, completed=done, total=total)

        return update

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)


# --------------------------------------------------------------------------- step-cost


def describe_passes(passes: dict[str, dict[str, dict[str, float]]]) -> str:
    """``attack 10f/10b, loss 1f/1b`` per network; ``ng`` marks forwards without a graph."""
    parts = []
    for net, phases in passes.items():
        items = []
        for phase, c in phases.items():
            if not c["fwd"] and not c["bwd"]:
                continue
            text = f"{phase} {c['fwd']:g}f/{c['bwd']:g}b"
            if c["fwd_no_graph"]:
                text += f" ({c['fwd_no_graph']:g} ng)"
            items.append(text)
        if items:
            parts.append(("" if net == "model" else f"{net}: ") + ", ".join(items))
    return "; ".join(parts)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


def step_cost_table(payload: dict[str, Any]) -> Table:
    """The rich table of a step-cost result (``StepCostResult.as_dict()``)."""
    s, env = payload["settings"], payload["environment"]
    title = (f"training step: {s['model']}, batch {s['batch_size']}, PGD-{s['attack_steps']}, {env['device']} "
             f"({env['torch_threads']} threads), precision {s['precision']} "
             f"(attack {s.get('attack_precision', 'same')})"
             f"{', channels-last' if s['channels_last'] else ''}{', compiled' if s['compile'] else ''}, "
             f"median of {s['steps']} rounds")
    table = Table(title=title, title_justify="left")
    on_cpu = env["device"] == "cpu"
    twins = any(row.get("speedup_vs_fp32") is not None for row in payload["methods"])
    speedups = (["x fp32"] + (["x fp32 cpu"] if on_cpu else [])) if twins else []
    columns = ["method", "s/step", "x AT"] + (["x AT cpu"] if on_cpu else []) + speedups + [
        "target", "bound", "peak MB", "act MB"]
    for name in columns:
        table.add_column(name, justify="left" if name == "method" else "right", no_wrap=True)
    for row in payload["methods"]:
        target = row["target_ratio"]
        ratios = [_ratio(row["ratio_to_at"], target)]
        if on_cpu:
            ratios.append(_ratio(row["ratio_to_at_cpu_time"], target))
        if twins:
            keys = ["speedup_vs_fp32"] + (["speedup_vs_fp32_cpu_time"] if on_cpu else [])
            ratios += [f"{row[k]:.2f}" if row.get(k) is not None else "" for k in keys]
        table.add_row(
            row["method"] + ("" if row["finite"] else " [red]NaN[/]"), f"{row['median_s']:.3f}", *ratios,
            f"{target:.2f}" if target is not None else "",
            f"{row['bound_ratio']:.2f}" if row["bound_ratio"] is not None else "-",
            _mb(row["peak_memory_mb"]), _mb(row["activations_mb"]),
        )
    return table


def _ratio(value: float | None, target: float | None) -> str:
    """A ratio, green within its target and red over it."""
    if value is None:
        return "-"
    if target is None:
        return f"{value:.2f}"
    return f"[green]{value:.2f}[/]" if value <= target else f"[red]{value:.2f}[/]"


def passes_table(payload: dict[str, Any]) -> Table:
    """Where each method's passes go: per network and phase."""
    table = Table(title="passes per step (batch equivalents): f forward, b backward, ng forward without graph",
                  title_justify="left")
    for name in ("method", "fwd", "bwd", "passes"):
        table.add_column(name, justify="right" if name in ("fwd", "bwd") else "left", no_wrap=name != "passes")
    for row in payload["methods"]:
        table.add_row(row["method"], f"{row['fwd']:g}", f"{row['bwd']:g}", describe_passes(row["passes"]))
    return table


@bench_app.command("step-cost")
def step_cost_command(
    model: str = typer.Option("resnet18", "--model", help="Architecture (see 'atzoo list models')."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per training step."),
    methods: Optional[str] = typer.Option(
        None, "--methods", help="Comma-separated methods (default: every registered one). AT is always measured."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | mps."),
    steps: int = typer.Option(5, "--steps", help="Timed rounds (one step of every method per round)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed rounds after the instrumented first step."),
    attack_steps: int = typer.Option(10, "--attack-steps", help="PGD steps of the training attack."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Use this dataset's first training images (default: a random CIFAR-shaped batch)."),
    image_size: int = typer.Option(32, "--image-size", help="Side of the random images."),
    channels: int = typer.Option(3, "--channels", help="Channels of the random images."),
    num_classes: int = typer.Option(10, "--num-classes", help="Classes of the random labels."),
    precision: str = typer.Option("no", "--precision", help="no (fp32) | bf16 | fp16 (as run.precision)."),
    attack_precision: str = typer.Option(
        "same", "--attack-precision",
        help="fp32 | bf16 | fp16 | same (as attack.precision). Below fp32, each row is also measured in fp32."),
    channels_last: bool = typer.Option(False, "--channels-last", help="NHWC memory format (model.channels_last)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the network, attack included (model.compile)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads (default: unchanged)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights, the batch and the attacks."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="section.key=value settings for every method, e.g. attack.bn_mode=train."),
) -> None:
    """Median time of a full training step of every method and its ratio to AT (same run)."""
    from atzoo.bench import StepCostSettings, run_step_cost

    check_json_path(json_file)
    settings = StepCostSettings(
        model=model, batch_size=batch_size, methods=parse_list(methods), device=device, steps=steps, warmup=warmup,
        attack_steps=attack_steps, image_size=image_size, channels=channels, num_classes=num_classes,
        dataset=dataset, precision=precision, attack_precision=attack_precision, channels_last=channels_last,
        compile=compile_, threads=threads, seed=seed, overrides=tuple(overrides or ()),
    )
    with _Bar("step-cost") as progress:
        result = run_step_cost(settings, progress=progress)
    payload = result.as_dict()
    console = Console()
    console.print(step_cost_table(payload))
    console.print(passes_table(payload))
    env = payload["environment"]
    load = env.get("load_average_start")
    console.print(
        "x AT: median over rounds of the step time over AT's in the same round (green: within the target, "
        "red: over it); x AT cpu: the same from the process CPU time (the stable figure on a shared CPU with "
        "one thread). bound: the ratio the pass "
        "counts predict (forward = 1, attack backward = 1, training backward = 2). fwd/bwd: passes in batch "
        "equivalents (all networks). x fp32: the row's fp32 twin (<row>@fp32, same rounds) over the row. "
        "act MB: tensors saved for backward by the training forward. peak MB: "
        f"{env['memory_measure']}." + (f" Load average at start: {load[0]:.2f}." if load else ""),
        highlight=False,
    )
    write_json(json_file, payload, console)
    from atzoo.report.bench_records import record_step_cost

    recorded = record_step_cost(payload)
    if recorded is not None:
        console.print(f"ratios recorded for 'atzoo compare' in {recorded}", highlight=False)


# --------------------------------------------------------------------------- eval


@bench_app.command("eval")
def eval_command(
    model: str = typer.Option("resnet18", "--model", help="Architecture (random weights; see 'atzoo list models')."),
    run: Optional[Path] = typer.Option(None, "--run", help="A run directory or model.safetensors instead of --model."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per batch (eval.batch_size)."),
    steps: int = typer.Option(20, "--steps", help="PGD steps (20: PGD-20)."),
    batches: int = typer.Option(3, "--batches", help="Timed batches."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed batches first."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | mps."),
    precision: str = typer.Option("no", "--precision", help="no | bf16 | fp16."),
    channels_last: bool = typer.Option(False, "--channels-last", help="NHWC memory format."),
    norm: str = typer.Option("linf", "--norm", help="linf | l2."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Radius, e.g. 8/255 (default 8/255 L-inf, 0.5 L2)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads (default: unchanged)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the batch, the weights and the random starts."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """Images per second of the evaluator's PGD-N attack (plus the final forward)."""
    from atzoo.bench import EvalThroughputSettings, run_eval_throughput
    from atzoo.config import coerce

    check_json_path(json_file)
    radius = None if eps is None else coerce(_number(eps), float, "--eps")
    settings = EvalThroughputSettings(
        model=model, run=str(run) if run is not None else None, batch_size=batch_size, steps=steps, batches=batches,
        warmup=warmup, device=device, precision=precision, channels_last=channels_last, norm=norm, eps=radius,
        threads=threads, seed=seed,
    )
    with _Bar("eval") as progress:
        payload = run_eval_throughput(settings, progress=progress)
    console = Console()
    env, tm = payload["environment"], payload["threat_model"]
    table = Table(title=f"PGD-{steps} throughput ({tm['norm']}, eps {tm['eps']:.4g}, step {tm['step_size']:.4g}), "
                        f"{env['device']} ({env['torch_threads']} threads)", title_justify="left")
    for name in ("model", "batch", "median s / batch", "images/s", "passes / batch"):
        table.add_column(name, justify="left" if name == "model" else "right")
    table.add_row(str(run) if run is not None else model, str(batch_size), f"{payload['median_batch_s']:.3f}",
                  f"{payload['images_per_s']:,.1f}", f"{steps + 1}f/{steps}b")
    console.print(table)
    write_json(json_file, payload, console)


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # a fraction such as 8/255, left to coerce


# --------------------------------------------------------------------------- data


@bench_app.command("data")
def data_command(
    dataset: str = typer.Option("cifar10", "--dataset", help="An in-memory dataset name or npz:PATH."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per batch."),
    device: str = typer.Option("cpu", "--device", help="Where the batches must end up (cpu | cuda | mps)."),
    workers: str = typer.Option("0,2", "--workers", help="Worker counts of the torchvision DataLoader baseline."),
    batches: int = typer.Option(40, "--batches", help="Timed batches per loader."),
    threads: int = typer.Option(1, "--threads", help="torch intra-op threads in the main process."),
    seed: int = typer.Option(0, "--seed", help="Shuffling and augmentation seed."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """Images per second: the device-side loader against the torchvision DataLoader."""
    import torch

    from atzoo.bench.step_cost import check_device, environment
    from atzoo.data import create_dataset
    from atzoo.data.benchmark import loader_throughput

    check_json_path(json_file)
    worker_counts = parse_ints(workers, "--workers")
    if batch_size < 1 or batches < 1 or threads < 1:
        raise AtzooError("--batch-size, --batches and --threads must be >= 1")
    check_device(device)
    torch.set_num_threads(threads)
    bundle = create_dataset(dataset)
    with Console(stderr=True).status("timing the loaders"):
        results = loader_throughput(bundle, batch_size, device=device, num_workers=worker_counts,
                                    max_batches=batches, seed=seed)
    console = Console()
    table = Table(title=f"data loading: {dataset} ({len(bundle.train)} training images), batch {batch_size}, "
                        f"device {device}, {threads} torch thread(s)", title_justify="left")
    for name in ("loader", "images/s", "device loader speed-up"):
        table.add_column(name, justify="left" if name == "loader" else "right")
    table.add_row("device-side loader (atzoo)", f"{results['device_loader']:,.0f}", "")
    for w in worker_counts:
        table.add_row(f"torchvision DataLoader, {w} workers", f"{results[f'torchvision_workers_{w}']:,.0f}",
                      f"{results[f'speedup_workers_{w}']:.1f}x")
    console.print(table)
    env = {k: v for k, v in environment(torch.device(device)).items() if k != "memory_measure"}
    write_json(json_file, {"benchmark": "data_loader", "dataset": dataset, "batch_size": batch_size,
                           "device": device, "threads": threads, "workers": list(worker_counts),
                           "batches": batches, "results": results, "environment": env}, console)


def register(app: typer.Typer) -> None:
    """Adds the ``atzoo bench`` command group to the CLI."""
    app.add_typer(bench_app, name="bench")


__all__ = ["bench_app", "describe_passes", "passes_table", "register", "step_cost_table"]
