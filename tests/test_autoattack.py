"""AutoAttack adapter: equals the package, <= PGD-20, sharded == unsharded, resumes exactly."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from atzoo.attacks import pgd, run_autoattack
from atzoo.attacks.autoattack import autoattack_package
from atzoo.attacks.sharding import ProcessGroup, ShardedRun, assign_chunks, chunk_bounds, save_state
from atzoo.errors import AtzooError, ConfigError

from digits_model import DigitsMLP, train_digits_mlp

EPS = 0.05  # on 8x8 digits: PGD-20 leaves about 70 % of the tiny model's predictions intact
N_EX = 32
CHUNK = 8
CUSTOM = ["apgd-ce"]


def digits_tensors() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from atzoo.data import create_dataset

    bundle = create_dataset("digits")
    unit = lambda t: t.to(torch.float32).div_(255)  # noqa: E731  (the loaders' conversion)
    return unit(bundle.train.x), bundle.train.y, unit(bundle.test.x), bundle.test.y


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Tensor, Tensor]:
    """A DigitsMLP trained for a few epochs (about a second); the first N_EX test digits."""
    x, y, x_test, y_test = digits_tensors()
    return train_digits_mlp(x, y), x_test[:N_EX], y_test[:N_EX]


@pytest.fixture(scope="module")
def reference(trained):
    model, x, y = trained
    start = time.perf_counter()
    result = run_autoattack(model, x, y, eps=EPS, version="custom", attacks=CUSTOM, chunk_size=CHUNK, seed=0)
    print(f"\nreference AutoAttack (apgd-ce, {N_EX} digits, eps {EPS}): clean {result.clean_acc:.2f}% "
          f"robust {result.robust_acc:.2f}% in {time.perf_counter() - start:.2f}s")
    return result


def direct_flags(model: nn.Module, x: Tensor, y: Tensor, *, seed: int, version: str, eps: float = EPS,
                 attacks: list[str] | None = None) -> Tensor:
    """The package called by hand, as its README shows (pyautoattack's keyword API)."""
    pkg = autoattack_package()
    kwargs = {"attacks": attacks} if attacks else {}
    adversary = pkg.AutoAttack(model, norm="Linf", eps=eps, version=version, seed=seed, device="cpu", **kwargs)
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
    return y_adv.eq(y)


# --------------------------------------------------------------------------- against the package


def test_adapter_equals_direct_package_calls(trained, reference) -> None:
    model, x, y = trained
    assert 0 < reference.robust_acc < reference.clean_acc  # a meaningful, non-trivial setting
    by_hand = torch.cat([direct_flags(model, x[s:e], y[s:e], seed=i, version="custom", attacks=CUSTOM)
                         for i, (s, e) in enumerate(chunk_bounds(N_EX, CHUNK))])
    assert torch.equal(reference.robust_flags, by_hand)
    whole = run_autoattack(model, x, y, eps=EPS, version="custom", attacks=CUSTOM, chunk_size=N_EX, seed=7)
    assert torch.equal(whole.robust_flags, direct_flags(model, x, y, seed=7, version="custom", attacks=CUSTOM))
    assert reference.settings["package"].startswith(("pyautoattack", "autoattack"))
    assert reference.settings["attacks"] == CUSTOM and reference.settings["n_ex"] == N_EX


def test_standard_version_on_a_tiny_input(trained) -> None:
    model, x, y = trained
    x, y = x[:6], y[:6]
    start = time.perf_counter()
    result = run_autoattack(model, x, y, eps=0.3, version="standard", chunk_size=6, seed=0)
    seconds = time.perf_counter() - start
    print(f"\nAutoAttack standard on 6 digits, eps 0.3: robust {result.robust_acc:.2f}% in {seconds:.2f}s")
    assert result.settings["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert torch.equal(result.robust_flags, direct_flags(model, x, y, seed=0, version="standard", eps=0.3))


def test_autoattack_not_above_pgd20(trained, reference) -> None:
    model, x, y = trained
    g = torch.Generator().manual_seed(0)
    x_adv = pgd(model, x, y, eps=EPS, step_size=EPS / 4, steps=20, generator=g)
    with torch.no_grad():
        pgd_acc = 100.0 * model(x_adv).argmax(1).eq(y).float().mean().item()
    print(f"\nPGD-20 {pgd_acc:.2f}% vs AutoAttack {reference.robust_acc:.2f}% ({N_EX} digits, eps {EPS})")
    assert reference.robust_acc <= pgd_acc
    assert not (reference.robust_flags & ~reference.clean_flags).any()


def test_contract_no_grads_modes_and_rng_restored(trained) -> None:
    model, x, y = trained
    model.train()
    model.body[1].eval()  # mixed modes must come back exactly
    before = {name: m.training for name, m in model.named_modules()}
    rng = torch.get_rng_state()
    # FAB calls backward(): parameters must get no .grad from it.
    run_autoattack(model, x[:4], y[:4], eps=EPS, version="custom", attacks=["fab"], chunk_size=4)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert {name: m.training for name, m in model.named_modules()} == before
    assert torch.equal(torch.get_rng_state(), rng)
    model.eval()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"version": "fast"}, "version must be one of standard, plus, rand, custom"),
        ({"version": "custom"}, "needs a list of attacks"),
        ({"version": "custom", "attacks": ["apgd-xx"]}, "unknown AutoAttack attack 'apgd-xx'"),
        ({"version": "standard", "attacks": ["apgd-ce"]}, "only be chosen with version 'custom'"),
        ({"eps": 0.0}, r"eps must be in \(0, 1\]"),
        ({"norm": "l1"}, "norm must be one of linf, l2"),
    ],
)
def test_bad_arguments(trained, kwargs: dict, match: str) -> None:
    model, x, y = trained
    args = {"eps": EPS, **kwargs}
    with pytest.raises(ConfigError, match=match):
        run_autoattack(model, x, y, **args)


# --------------------------------------------------------------------------- resuming


def test_interrupted_run_resumes_from_its_state_file(trained, reference, tmp_path: Path) -> None:
    model, x, y = trained
    state = tmp_path / "autoattack_state.json"

    class Interrupt(Exception):
        pass

    def stop_after_first(index: int, flags: dict) -> None:
        raise Interrupt

    args = dict(eps=EPS, version="custom", attacks=CUSTOM, chunk_size=CHUNK, seed=0, state_path=state)
    with pytest.raises(Interrupt):
        run_autoattack(model, x, y, on_chunk_done=stop_after_first, **args)
    saved = json.loads(state.read_text())
    assert saved["finished"] == [0] and len(saved["chunks"]["0"]["robust"]) == CHUNK
    plans: list[list[int]] = []
    resumed = run_autoattack(model, x, y, on_plan=plans.append, **args)
    assert plans == [[1, 2, 3]]  # chunk 0 came from the state file
    assert torch.equal(resumed.robust_flags, reference.robust_flags)
    assert torch.equal(resumed.clean_flags, reference.clean_flags)
    assert json.loads(state.read_text())["finished"] == [0, 1, 2, 3]
    # Another threat model does not reuse the state.
    plans.clear()
    run_autoattack(model, x[:CHUNK], y[:CHUNK], on_plan=plans.append, **{**args, "eps": 2 * EPS})
    assert plans == [[0]]


def test_sharded_run_mechanics_with_a_fake_attack(tmp_path: Path) -> None:
    calls: list[int] = []

    def work(index: int, start: int, stop: int) -> dict:
        calls.append(index)
        return {"flag": [(i % 3 == 0) for i in range(start, stop)]}

    state = tmp_path / "s.json"
    run = ShardedRun(n=10, chunk_size=4, group=ProcessGroup(), state_path=state, fingerprint="a")
    assert run.run(work)["flag"] == [(i % 3 == 0) for i in range(10)]
    assert calls == [0, 1, 2]
    assert run.run(work)["flag"] == [(i % 3 == 0) for i in range(10)] and calls == [0, 1, 2]
    other = ShardedRun(n=10, chunk_size=4, group=ProcessGroup(), state_path=state, fingerprint="b")
    other.run(work)
    assert calls == [0, 1, 2, 0, 1, 2]
    state.write_text("{ torn")  # a damaged state is a cache miss, not a crash
    other.run(work)
    assert calls[-3:] == [0, 1, 2]
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind
    # A part file left by an interrupted multi-process run is resumed from, then merged away.
    state.unlink()
    save_state(tmp_path / "s.rank3.json", "b", {}, 10, 4, {1: {"flag": [True, False, True, False]}})
    calls.clear()
    assert other.run(work)["flag"][4:8] == [True, False, True, False]  # taken from the part file
    assert calls == [0, 2] and not list(tmp_path.glob("s.rank*.json"))


def test_chunk_assignment_is_contiguous_and_complete() -> None:
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    for pending in ([0, 1, 2, 3, 4, 5, 6], [2, 5, 6], []):
        for world in (1, 2, 3, 8):
            parts = [assign_chunks(pending, r, world) for r in range(world)]
            assert [c for p in parts for c in p] == pending
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(AtzooError):
        chunk_bounds(10, 0)


# --------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, state_dict: dict, x: Tensor, y: Tensor, bundle, out: str) -> None:
    """One of two CPU processes: AutoAttack and the evaluator, results to out/rank<k>.json."""
    from atzoo.config import AttackConfig, EvalConfig
    from atzoo.eval import evaluate

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = DigitsMLP()
        model.load_state_dict(state_dict)
        model.eval()
        plans: list[list[int]] = []
        result = run_autoattack(model, x, y, eps=EPS, version="custom", attacks=CUSTOM, chunk_size=CHUNK, seed=0,
                                state_path=Path(out) / "autoattack_state.json", on_plan=plans.append)
        cfg = EvalConfig(attacks=["clean", "aa"], n_ex=N_EX, aa_version="custom", batch_size=16, eps=EPS)
        # Same model, data and settings: the evaluator's AutoAttack resumes from the state just
        # written (nothing left to attack) and must report the same accuracy.
        payload = evaluate(model, bundle, cfg, attack_cfg=AttackConfig(eps=EPS), progress=False, out=out,
                           aa_attacks=CUSTOM, aa_chunk_size=CHUNK)
        record = {"robust": result.robust_flags.tolist(), "clean": result.clean_flags.tolist(), "plan": plans[0],
                  "clean_acc": payload["clean_acc"], "n_examples": payload["n_examples"],
                  "autoattack_acc": payload["autoattack_acc"]}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(trained, reference, tmp_path: Path) -> None:
    from atzoo.config import AttackConfig, EvalConfig
    from atzoo.data import create_dataset
    from atzoo.eval import evaluate

    model, x, y = trained
    bundle = create_dataset("digits", test_subset=40)
    start = time.perf_counter()
    mp.spawn(_worker, args=(2, _free_port(), model.state_dict(), x, y, bundle, str(tmp_path)), nprocs=2, join=True)
    print(f"\n2-process CPU run (spawn, gloo, AutoAttack + evaluator): {time.perf_counter() - start:.2f}s")
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["plan"] for r in records] == [[0, 1], [2, 3]]  # each process attacked its own half
    for record in records:
        assert record["robust"] == reference.robust_flags.tolist()
        assert record["clean"] == reference.clean_flags.tolist()
        assert record["autoattack_acc"] == pytest.approx(reference.robust_acc, abs=0)
    state = json.loads((tmp_path / "autoattack_state.json").read_text())
    assert state["finished"] == [0, 1, 2, 3]
    assert not list(tmp_path.glob("autoattack_state.rank*.json"))  # part files merged and removed
    # The evaluator's clean accuracy (summed over the two shards) equals one process's.
    single = evaluate(model, bundle, EvalConfig(attacks=["clean"], n_ex=N_EX, batch_size=16, eps=EPS),
                      attack_cfg=AttackConfig(eps=EPS), progress=False)
    assert records[0]["n_examples"] == single["n_examples"] == N_EX  # every attack on the same first N_EX
    assert records[0]["clean_acc"] == records[1]["clean_acc"] == pytest.approx(single["clean_acc"], abs=1e-9)


# --------------------------------------------------------------------------- issue 26: progress inside


def test_progress_inside_the_ensemble_names_each_attack_and_counts_the_robust(trained) -> None:
    """``on_attack`` follows the ensemble attack by attack (the reference reports nothing
    between attacks); the count after the last attack is the chunk's robust count, and
    watching changes no flag."""
    model, x, y = trained
    args = dict(eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t"], chunk_size=8, seed=3)
    events: list[tuple[int, str, int, int]] = []
    watched = run_autoattack(model, x[:16], y[:16], on_attack=lambda *e: events.append(e), **args)
    plain = run_autoattack(model, x[:16], y[:16], **args)
    assert torch.equal(watched.robust_flags, plain.robust_flags)
    for chunk in (0, 1):
        mine = [e for e in events if e[0] == chunk]
        robust = int(watched.robust_flags[chunk * 8:(chunk + 1) * 8].sum())
        assert [e[1] for e in mine] == ["apgd-ce", "apgd-t"][:len(mine)] and mine, events
        assert all(e[3] == 8 for e in mine) and [e[2] for e in mine] == sorted((e[2] for e in mine), reverse=True)
        assert mine[-1][2] == robust
    from atzoo.attacks.autoattack import build_adversary, watch_attacks

    adversary = build_adversary(model, norm="linf", eps=EPS, version="standard", attacks=None, seed=0,
                                device=torch.device("cpu"), num_classes=10)
    with watch_attacks(adversary, model, lambda attack, fooled: None):
        assert all("perturb" in vars(getattr(adversary, a)) for a in ("apgd", "apgd_targeted", "fab", "square"))
    assert not any("perturb" in vars(getattr(adversary, a)) for a in ("apgd", "apgd_targeted", "fab", "square"))


def test_autoattack_bar_names_the_attack_done_the_robust_so_far_and_the_attack_running() -> None:
    from atzoo.eval.evaluator import AutoAttackWatch

    class Bars:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def set_total(self, task, total):  # noqa: ANN001
            self.calls.append(("total", total))

        def advance(self, task, amount=1):  # noqa: ANN001
            self.calls.append(("advance",))

        def set_completed(self, task, completed):  # noqa: ANN001
            self.calls.append(("completed", completed))

        def describe(self, task, text):  # noqa: ANN001
            self.calls.append(("describe", text))

    bars = Bars()
    watch = AutoAttackWatch("AutoAttack (standard)", ["apgd-ce", "apgd-t", "fab-t", "square"], bars, task=0)
    watch.plan([0, 1])
    watch.attack_done(0, "apgd-ce", 20, 32)
    watch.attack_done(0, "apgd-t", 0, 32)  # nothing left: the package skips the rest
    watch.chunk_done(0, {"clean": [True] * 32, "robust": [False] * 32})
    watch.attack_done(1, "apgd-ce", 5, 8)
    assert bars.calls == [
        ("total", 8), ("advance",), ("describe", "AutoAttack (standard) apgd-ce: 20/32 robust, running apgd-t"),
        ("advance",), ("describe", "AutoAttack (standard) apgd-t: 0/32 robust"),
        ("completed", 4), ("describe", "AutoAttack (standard) 0/32 robust"),
        ("advance",), ("describe", "AutoAttack (standard) apgd-ce: 5/40 robust, running apgd-t"),
    ]
