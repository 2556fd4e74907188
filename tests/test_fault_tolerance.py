"""Kill -9 and resume: a crashed run finishes with the weights of an uninterrupted one.

Real ``python -m atzoo train`` processes are killed with SIGKILL at chosen points
(mid-epoch between checkpoints, right after a checkpoint, in the middle of writing one,
after the final checkpoint but before the export) through the engine's crash hook
(``ATZOO_TEST_CRASH_AT=<phase>:<step>``, see :data:`atzoo.engine.checkpoint.CRASH_ENV`),
then resumed with ``atzoo train ... --resume``. The final ``model.safetensors``, the final
checkpoint (weights, optimizer, scheduler, EMA, RNG, counters) and the logged losses must
equal those of one uninterrupted run, bit for bit.

One module-scoped fixture runs the uninterrupted reference and the runs to be killed.
One killed run is a plain ``python -m atzoo train ...`` process; the others are forked,
one after the other, by tests/crash_runs.py from a single interpreter that has imported
atzoo once (each is still its own process running the same ``atzoo.cli.run``), which
keeps the file well under a minute on a loaded two-core machine. Both start together.
The resumes run in-process through :func:`atzoo.cli.run`. Every process uses one thread,
as the test process does (conftest), so all of them compute with the same kernels.

The run: AT with PGD-1 and an EMA on 96 digits (of 112: 16 are held out for the
per-epoch validation), batch 16, 3 epochs = 18 optimizer steps; checkpoints every 4 steps
and at each epoch end (steps 4, 6, 8, 12, 16, 18), the last 3 kept. The validation rows,
the best-epoch state and ``model_best.safetensors`` must match too.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from atzoo.cli import run
from atzoo.engine import read_metrics
from atzoo.engine.checkpoint import CRASH_ENV, MANIFEST, CheckpointData, list_checkpoints, load_checkpoint
from atzoo.engine.lock import LOCK_FILE, RunLock, process_start
from atzoo.errors import ConfigError, RunDirError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"),
                                reason="needs POSIX fork and SIGKILL")

TRAIN = [
    "train", "at", "--model", "small_cnn", "--dataset", "digits",
    "data.train_subset=112", "data.val_size=16", "eval.val_every=1", "data.test_subset=32", "data.batch_size=16",
    "optim.epochs=3",
    "attack.steps=1", "run.deterministic=true", "run.checkpoint_every_steps=4", "run.keep_checkpoints=3",
    "run.log_every=1", "run.evaluate=false", "run.trackers=[]", "averaging.ema=true", "averaging.ema_decay=0.9",
]
FINAL_STEP = 18
#: Fields of state.json and metrics rows that measure time, or the log's own length
#: (a resumed log holds extra "resume" events); everything else must match exactly.
TIMING_KEYS = {"seconds", "images_per_s", "metrics_bytes", "message", "cpu_s", "wall_s", "thread_s"}


def step_dir(step: int) -> str:
    return f"step-{step:09d}"


@dataclass(frozen=True)
class Kill:
    """Where a run is killed, and what the resume must start from."""

    crash_at: str  # ATZOO_TEST_CRASH_AT
    newest_after_kill: int | None  # global step of the newest complete checkpoint left
    resumes_from: int | None  # None: no checkpoint, the resume starts from the beginning


KILLS = {
    "mid-epoch-between-checkpoints": Kill("step:10", newest_after_kill=8, resumes_from=8),
    "right-after-mid-epoch-checkpoint": Kill("checkpoint-done:8", newest_after_kill=8, resumes_from=8),
    "during-first-checkpoint-write": Kill("checkpoint-write:4", newest_after_kill=None, resumes_from=None),
    "during-epoch-end-checkpoint-write": Kill("checkpoint-write:12", newest_after_kill=8, resumes_from=8),
    "after-final-checkpoint-before-export": Kill("checkpoint-done:18", newest_after_kill=18, resumes_from=18),
}


@dataclass
class Finished:
    run_dir: Path
    returncode: int
    log: str  # the process's stdout and stderr


def _env(crash_at: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (CRASH_ENV, "ATZOO_DEBUG")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the test process runs single-threaded too
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    return env


#: A run stopped by SIGINT (what Ctrl-C sends) after step 10: it must say how to resume.
INTERRUPTED, INTERRUPT_AT = "sigint-mid-epoch", "step:10:SIGINT"
#: A run sent SIGTERM (a scheduler's preemption) during step 10: it checkpoints step 10 and
#: stops with 143, so that a requeued job continues with --resume.
TERMINATED, TERMINATE_AT = "sigterm-mid-epoch", "step:10:SIGTERM"

#: The kill run as a plain ``python -m atzoo`` process (the others go through the helper).
PLAIN_PROCESS = "mid-epoch-between-checkpoints"
HELPER = Path(__file__).with_name("crash_runs.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Finished]:
    """The uninterrupted reference run and every run to be killed, each its own process."""
    root = tmp_path_factory.mktemp("kill")
    jobs = [{"name": name, "argv": [*TRAIN, "--out", str(root / name)], "crash_at": crash_at,
             "log": str(root / f"{name}.log")}
            for name, crash_at in [("reference", None), *((n, k.crash_at) for n, k in KILLS.items()),
                                   (INTERRUPTED, INTERRUPT_AT), (TERMINATED, TERMINATE_AT)]
            if name != PLAIN_PROCESS]
    (root / "jobs.json").write_text(json.dumps(jobs))
    with open(root / f"{PLAIN_PROCESS}.log", "w") as log:
        plain = subprocess.Popen([sys.executable, "-m", "atzoo", *TRAIN, "--out", str(root / PLAIN_PROCESS)],
                                 cwd=root, env=_env(KILLS[PLAIN_PROCESS].crash_at), stdout=log, stderr=log)
        helper = subprocess.run([sys.executable, str(HELPER), str(root / "jobs.json")], cwd=root, env=_env(None),
                                capture_output=True, text=True, timeout=300)
        codes = {PLAIN_PROCESS: plain.wait(timeout=300)}
    assert helper.returncode == 0, helper.stderr
    codes.update(json.loads((root / "jobs.json.result").read_text()))
    finished = {name: Finished(root / name, code, (root / f"{name}.log").read_text()) for name, code in codes.items()}
    reference = finished["reference"]
    assert reference.returncode == 0, reference.log
    return finished


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No crash hook in this process, one thread like the runs; global switches restored."""
    from accelerate.state import AcceleratorState

    monkeypatch.delenv(CRASH_ENV, raising=False)
    monkeypatch.delenv("ATZOO_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.set_num_threads(1)  # whatever an earlier test set: the same kernels as the killed runs
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    AcceleratorState._reset_state()


# --------------------------------------------------------------------------- comparison


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def assert_same_objects(a: Any, b: Any, where: str) -> None:
    """Nested dicts/lists of tensors and scalars are equal (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same_objects(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_objects(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_checkpoint(ours: CheckpointData, ref: CheckpointData) -> None:
    assert set(ours.tensors) == set(ref.tensors) == {"training", "method", "rng", "average"}
    for stem in ref.tensors:
        assert_same_objects(ours.tensors[stem], ref.tensors[stem], stem)
    assert_same_objects(ours.pickled, ref.pickled, "optimizer.pt")
    assert without_timing(ours.state) == without_timing(ref.state)


def training_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The logged training rows (losses, accuracies, lr per step and epoch), timing removed."""
    kinds = ("step", "epoch", "epoch_start", "val", "final")
    return [without_timing(r) for r in read_metrics(run_dir) if r["kind"] in kinds]


def assert_matches_reference(run_dir: Path, reference: Path) -> None:
    for name in ("model.safetensors", "model_last.safetensors", "model_best.safetensors", "model_meta.json"):
        assert digest(run_dir / name) == digest(reference / name), f"{name} differs from the uninterrupted run"
    # curves.png is titled with the run's own name; what it draws must be the same
    from atzoo.engine.curves import run_curves

    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_curves(run_dir) == run_curves(reference)
    names = [p.name for p in list_checkpoints(run_dir / "checkpoints")]
    assert names == [p.name for p in list_checkpoints(reference / "checkpoints")]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")], "temporaries left"
    final = step_dir(FINAL_STEP)
    assert_same_checkpoint(load_checkpoint(run_dir / "checkpoints" / final),
                           load_checkpoint(reference / "checkpoints" / final))
    assert training_rows(run_dir) == training_rows(reference)


# --------------------------------------------------------------------------- kill and resume


def check_killed_state(run_dir: Path, kill: Kill) -> None:
    """What the killed process left: the point it died at, nothing more."""
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    newest = checkpoints[-1].name if checkpoints else None
    assert newest == (step_dir(kill.newest_after_kill) if kill.newest_after_kill is not None else None)
    phase, _, step = kill.crash_at.partition(":")
    temporaries = sorted((run_dir / "checkpoints").glob(f".tmp-{step_dir(int(step))}.*"))
    if phase == "checkpoint-write":  # died with the files written, before manifest and rename
        assert len(temporaries) == 1 and (temporaries[0] / "training.safetensors").is_file()
        assert not (temporaries[0] / MANIFEST).exists()
    else:
        assert temporaries == []
    if phase == "step":  # the log ran past the newest checkpoint: the resume must cut it back
        with open(run_dir / "metrics.jsonl", "a") as log:  # and a row torn by a kill while appending
            log.write('{"kind": "step", "epoch": 1, "ste')
        assert [r["step"] for r in read_metrics(run_dir) if r["kind"] == "step"][-1] == int(step)
    assert not (run_dir / "model.safetensors").exists()


def resume(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``atzoo train ... --resume`` in this process; returns its stderr."""
    capsys.readouterr()
    code = run([*TRAIN, "--resume", "--out", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


@pytest.mark.parametrize("case", list(KILLS))
def test_sigkill_then_resume_is_bit_identical(case: str, runs: dict[str, Finished],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    kill, killed = KILLS[case], runs[case]
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed ({killed.returncode}): {killed.log}"
    check_killed_state(killed.run_dir, kill)
    err = resume(killed.run_dir, capsys)
    if kill.resumes_from is None:
        assert "starting from the beginning" in err
    else:
        assert f"resuming from {killed.run_dir / 'checkpoints' / step_dir(kill.resumes_from)}" in err
    assert_matches_reference(killed.run_dir, runs["reference"].run_dir)
    events = [r["event"] for r in read_metrics(killed.run_dir) if r["kind"] == "event"]
    assert events.count("resume") == 1


# --------------------------------------------------------------------------- damaged newest checkpoint


class _Payload:
    """Unpickling this runs a shell command: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))


def plant_code(checkpoint: Path, marker: Path) -> Path:
    """Replaces optimizer.pt by a pickle that runs code, with a manifest that vouches for it."""
    buffer = io.BytesIO()
    torch.save({"optimizer": _Payload(marker), "scheduler": {}}, buffer)
    blob = buffer.getvalue()
    target = checkpoint / "optimizer.pt"
    target.write_bytes(blob)
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    manifest["files"]["optimizer.pt"] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize("damage", ["truncated-weights", "flipped-byte", "planted-pickle"])
def test_damaged_newest_checkpoint_is_named_and_resume_falls_back(
    damage: str, runs: dict[str, Finished], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = runs["reference"].run_dir
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    for name in ("model.safetensors", "model_last.safetensors", "model_meta.json", "curves.png"):
        (run_dir / name).unlink()  # as if the process died after its final checkpoint
    newest = run_dir / "checkpoints" / step_dir(FINAL_STEP)
    marker = tmp_path / "code-ran"
    if damage == "planted-pickle":
        target = plant_code(newest, marker)
        expected = f"skipping bad checkpoint: refusing to load checkpoint file {target}"
    else:
        target = newest / "training.safetensors"
        blob = bytearray(target.read_bytes())
        if damage == "truncated-weights":
            del blob[-100:]
            expected = f"skipping bad checkpoint: checkpoint file {target} is truncated"
        else:
            blob[len(blob) // 2] ^= 0x01
            expected = f"skipping bad checkpoint: checkpoint file {target} is corrupted (SHA-256 mismatch)"
        target.write_bytes(bytes(blob))
    err = resume(run_dir, capsys)
    assert expected in err
    assert f"resuming from {run_dir / 'checkpoints' / step_dir(16)}" in err
    assert not marker.exists(), "loading a checkpoint ran code"
    assert_matches_reference(run_dir, reference)  # the damaged step-18 was recomputed and rewritten
    events = [r for r in read_metrics(run_dir) if r["kind"] == "event" and r["event"] == "checkpoint_skipped"]
    assert len(events) == 1 and str(target) in events[0]["message"]


# --------------------------------------------------------------------------- issue 18: interruptions


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def test_sigint_prints_how_to_resume_and_that_command_finishes_bit_identically(
    runs: dict[str, Finished], capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C (SIGINT) after step 10: exit 130, the documented line, and the command it
    prints continues the run to the weights of the uninterrupted one."""
    stopped = runs[INTERRUPTED]
    assert stopped.returncode == 130, stopped.log
    line = last_line(stopped.log)
    expected = shlex.join(["atzoo", *TRAIN, "--resume", "--out", str(stopped.run_dir)])
    assert line == f"atzoo: interrupted; continue the run in {stopped.run_dir} with: {expected}"
    assert "Traceback" not in stopped.log
    assert [p.name for p in list_checkpoints(stopped.run_dir / "checkpoints")][-1] == step_dir(8)
    assert not list((stopped.run_dir / "checkpoints").glob(".tmp-*"))
    assert not (stopped.run_dir / LOCK_FILE).exists(), "the lock is released on Ctrl-C"
    capsys.readouterr()
    assert run(shlex.split(line.split(" with: ", 1)[1])[1:]) == 0, capsys.readouterr().err
    assert f"resuming from {stopped.run_dir / 'checkpoints' / step_dir(8)}" in capsys.readouterr().err
    assert_matches_reference(stopped.run_dir, runs["reference"].run_dir)


def test_sigterm_checkpoints_the_step_exits_143_and_its_resume_command_is_bit_identical(
    runs: dict[str, Finished], capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM during step 10 (between the checkpoints of steps 8 and 12): the step ends, a
    checkpoint of step 10 is written, exit 143 (128 + 15) with the resume line; that command
    resumes from step 10 and finishes with the uninterrupted run's weights, bit for bit."""
    stopped = runs[TERMINATED]
    assert stopped.returncode == 128 + signal.SIGTERM == 143, stopped.log
    line = last_line(stopped.log)
    expected = shlex.join(["atzoo", *TRAIN, "--resume", "--out", str(stopped.run_dir)])
    assert line == (f"atzoo: stopped by SIGTERM after step 10 (checkpoint written); "
                    f"continue the run in {stopped.run_dir} with: {expected}")
    assert "Traceback" not in stopped.log
    assert [p.name for p in list_checkpoints(stopped.run_dir / "checkpoints")][-1] == step_dir(10)
    assert not list((stopped.run_dir / "checkpoints").glob(".tmp-*"))
    assert not (stopped.run_dir / LOCK_FILE).exists(), "the lock is released on SIGTERM"
    assert not (stopped.run_dir / "model.safetensors").exists()
    capsys.readouterr()
    assert run(shlex.split(line.split(" with: ", 1)[1])[1:]) == 0, capsys.readouterr().err
    assert f"resuming from {stopped.run_dir / 'checkpoints' / step_dir(10)}" in capsys.readouterr().err
    assert_matches_reference(stopped.run_dir, runs["reference"].run_dir)


def test_sigterm_outside_the_training_loop_stops_at_once_and_restores_the_handler() -> None:
    """Before the loop (set-up) there is no step boundary to wait for: SIGTERM raises at
    once; a second SIGTERM while armed does too; the previous handler comes back."""
    from atzoo.engine.stop import GracefulStop, StopSignal

    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        with pytest.raises(StopSignal) as raised:
            os.kill(os.getpid(), signal.SIGTERM)
        assert raised.value.exit_code == 143 and not raised.value.checkpointed
        stop.received, stop.armed = None, True
        assert stop.requested() is None and stop.requested(lambda v: v) is None
        assert stop.requested(lambda v: v + 1.0) == signal.SIGTERM  # another process received it
        os.kill(os.getpid(), signal.SIGTERM)  # armed: only recorded
        assert stop.requested() == signal.SIGTERM
        with pytest.raises(StopSignal):
            os.kill(os.getpid(), signal.SIGTERM)  # the second one: at once
    assert signal.getsignal(signal.SIGTERM) is before


def test_disk_full_during_a_checkpoint_is_one_line_and_resume_finishes_the_run(
    runs: dict[str, Finished], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC while the step-8 checkpoint is written: exit 2 with one line, its temporary
    folder gone, the earlier checkpoints intact; --resume once space is back finishes the
    run bit-identically."""
    from atzoo.engine import checkpoint

    writer = checkpoint.write_synced

    def disk_full(path: Path, data: bytes) -> str:
        if step_dir(8) in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return writer(path, data)

    run_dir = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "write_synced", disk_full)
    capsys.readouterr()
    assert run([*TRAIN, "--out", str(run_dir)]) == 2
    line = last_line(capsys.readouterr().err)
    assert line.startswith(f"atzoo: error: cannot write checkpoint {run_dir / 'checkpoints' / step_dir(8)}: ")
    assert "No space left on device" in line and "continue with --resume" in line
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [step_dir(4), step_dir(6)]
    assert not (run_dir / LOCK_FILE).exists()
    monkeypatch.setattr(checkpoint, "write_synced", writer)  # space is back
    resume(run_dir, capsys)
    assert_matches_reference(run_dir, runs["reference"].run_dir)


# --------------------------------------------------------------------------- issue 18: --force and locks


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` with its size, mtime and SHA-256 (files) or mtime (folders)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, digest(p) if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("failure", ["config-error-found-at-step-1", "ctrl-c-at-step-1"])
def test_force_restores_the_old_run_when_the_new_one_fails_before_it_started(
    failure: str, runs: dict[str, Finished], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    from atzoo.engine.trainer import Trainer

    run_dir = tmp_path / "run"
    shutil.copytree(runs["reference"].run_dir, run_dir)
    before = tree(tmp_path)

    def fail(self: Trainer, x: torch.Tensor, y: torch.Tensor) -> None:
        if failure == "ctrl-c-at-step-1":
            raise KeyboardInterrupt
        raise ConfigError("attack.start_std must be > 0 (found by the attack at step 1)")

    monkeypatch.setattr(Trainer, "train_batch", fail)
    capsys.readouterr()
    code = run([*TRAIN, "--force", "--out", str(run_dir)])
    err = capsys.readouterr().err
    if failure == "ctrl-c-at-step-1":
        assert code == 130
        assert last_line(err) == f"atzoo: interrupted before the run started; nothing was changed in {run_dir}"
    else:
        assert code == 2 and last_line(err) == "atzoo: error: attack.start_std must be > 0 (found by the attack at step 1)"
    assert tree(tmp_path) == before, "the old run must be back exactly as it was, nothing else left"


def test_force_deletes_the_old_run_only_after_the_new_one_started(
    runs: dict[str, Finished], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from atzoo.engine.trainer import Trainer

    run_dir = tmp_path / "run"
    shutil.copytree(runs["reference"].run_dir, run_dir)
    seen: list[list[str]] = []
    original = Trainer.after_optimizer_step

    def watch(self: Trainer) -> bool:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))  # before the step is recorded as started
        return original(self)

    monkeypatch.setattr(Trainer, "after_optimizer_step", watch)
    assert run([*TRAIN, "--force", "--out", str(run_dir), "run.max_steps=2"]) == 0, capsys.readouterr().err
    assert seen[0] == sorted(["run", f".run.replaced-{os.getpid()}"]), "old run kept aside until step 1 succeeded"
    assert seen[1] == ["run"] and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [step_dir(2)]


def _wait_stopped(pid: int) -> None:
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_second_run_refuses_a_folder_in_use_naming_the_holder_and_a_dead_holders_lock_is_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real training process holds the folder (stopped after step 2 by its crash hook):
    every second run into it (fresh, --resume, --force) refuses with its PID, changing
    nothing. Killed with -9, it leaves its lock file behind; that lock is stale (its PID
    is gone) and --resume takes the folder over."""
    run_dir = tmp_path / "run"
    argv = [*TRAIN, "--out", str(run_dir), "run.max_steps=3"]
    holder = subprocess.Popen([sys.executable, "-m", "atzoo", *argv], cwd=tmp_path, env=_env("step:2:SIGSTOP"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_stopped(holder.pid)
        before = tree(tmp_path)
        for extra in ([], ["--resume"], ["--force"]):
            capsys.readouterr()
            assert run([*argv, *extra]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"atzoo: error: run directory {run_dir} is in use by atzoo process {holder.pid} "
                                  "on this host"), err
            assert len(err.splitlines()) == 1
        assert run(["eval", str(run_dir), "--attacks", "clean"]) == 2  # its model is not final yet
        assert f"is in use by atzoo process {holder.pid}" in capsys.readouterr().err
        assert tree(tmp_path) == before
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == holder.pid  # left behind by kill -9
    capsys.readouterr()
    assert run([*argv, "--resume"]) == 0, capsys.readouterr().err
    assert [r["step"] for r in read_metrics(run_dir) if r["kind"] == "step"] == [1, 2, 3]
    assert not (run_dir / LOCK_FILE).exists()


def test_lock_file_pid_and_host_decide_staleness_where_no_flock_holds_it(tmp_path: Path) -> None:
    """Without a kernel lock (a file system where flock is a no-op, or a lock file copied
    along), the recorded PID, process start time and host decide."""
    lock = tmp_path / LOCK_FILE
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    host = socket.gethostname()
    lock.write_text(json.dumps({"pid": dead_pid.pid, "host": host, "process_start": None}))
    assert RunLock(tmp_path).live_holder() is None  # its process is gone: stale
    parent = os.getppid()
    lock.write_text(json.dumps({"pid": parent, "host": host, "process_start": process_start(parent)}))
    holder = RunLock(tmp_path).live_holder()
    assert holder is not None and holder.pid == parent  # a live process on this host: respected
    with pytest.raises(RunDirError, match=f"in use by atzoo process {parent} on this host"):
        RunLock(tmp_path).acquire()
    lock.write_text(json.dumps({"pid": parent, "host": host, "process_start": "1"}))  # PID reused since
    assert RunLock(tmp_path).live_holder() is None
    with RunLock(tmp_path) as held:
        assert json.loads(lock.read_text())["pid"] == os.getpid() and held.held
    assert not lock.exists()


# --------------------------------------------------------------------------- issue 18: AutoAttack state


def test_autoattack_state_that_does_not_cover_the_examples_is_recomputed(tmp_path: Path) -> None:
    """A state file with the right fingerprint whose chunks are short, of wrong types, or
    binary is a cache miss: every example is attacked (seen: 100% reported on 3 of 8)."""
    from atzoo.attacks.sharding import STATE_FORMAT, ProcessGroup, ShardedRun

    state = tmp_path / "autoattack_state.json"
    computed: list[int] = []

    def work(index: int, start: int, stop: int) -> dict[str, list[bool]]:
        computed.append(index)
        return {"clean": [True] * (stop - start), "robust": [False] * (stop - start)}

    damaged = [
        json.dumps({"format": STATE_FORMAT, "fingerprint": "f", "chunks": {"0": {"clean": [True] * 3,
                                                                                "robust": [True] * 3}}}),
        json.dumps({"format": STATE_FORMAT, "fingerprint": "f", "chunks": {"x": 1, "1": "robust"}}),
        json.dumps({"format": STATE_FORMAT, "fingerprint": "f", "chunks": [1, 2]}),
        b"\xff\xfe\x00 binary",
    ]
    for content in damaged:
        computed.clear()
        state.write_bytes(content if isinstance(content, bytes) else content.encode())
        result = ShardedRun(n=8, chunk_size=4, group=ProcessGroup(), state_path=state, fingerprint="f").run(work)
        assert computed == [0, 1], content
        assert result == {"clean": [True] * 8, "robust": [False] * 8}
    computed.clear()  # the file it wrote is valid and complete: nothing is recomputed
    ShardedRun(n=8, chunk_size=4, group=ProcessGroup(), state_path=state, fingerprint="f").run(work)
    assert computed == []
