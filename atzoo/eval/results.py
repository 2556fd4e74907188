"""``eval.json``: the results of one set of weights, merging, and the gradient-masking flags.

A run directory holds one ``eval.json``. Every result in it is bound to four things, all
recorded in the payload:

* the **weights** it measured: ``weights_fingerprint``, a hash of the evaluated tensors
  (:func:`weights_fingerprint`, the exported model's state in key order);
* the **data**: the test split's content digest (``dataset_identity.test.digest``);
* the **threat model**: ``norm`` and ``eps``;
* the **image set**: ``eval_set`` (the first N test images).

Re-running some attacks when all four agree updates their entries and keeps the others
(an ``atzoo eval --attacks aa`` after training keeps the clean and PGD numbers of the same
weights). When any of the four differs (other weights in the same folder, a resumed run
whose weights moved on, another eps), the new evaluation becomes the top level and the old
payload moves to the ``previous`` list: kept, never shown as current, never merged.

Headline accuracies (percent, all on the same images; an example counts as robust only if
it is also classified correctly clean, as RobustBench counts it):

* ``clean_acc``;
* ``pgd<N>_acc`` (and ``<name>_acc`` of any other per-batch attack): that attack alone;
* ``autoattack_acc``: standard AutoAttack alone, the number RobustBench and the papers report;
* ``worst_case_acc``: correct under every attack run on the set (the per-example minimum),
  present when more than one attack ran; at most the smallest of the above.

``accuracy_on_attack_outputs`` keeps, per attack, the accuracy on that attack's outputs without the
clean condition; only the ``robust_above_clean`` flag reads it.

Gradient-masking flags (Athalye et al., ICML 2018; Carlini et al., "On Evaluating
Adversarial Robustness", 2019, Sec. 5) say when the PGD numbers should not be trusted.
Each fires only beyond sampling noise: with ``n`` images and an accuracy ``p``, the
binomial standard error is ``SE = 100 * sqrt(p (1 - p) / n)`` points
(:func:`standard_error`), and a gap counts only when it exceeds
:data:`NOISE_Z` (3) standard errors of the difference of two such accuracies
(``sqrt(2) * SE``, a conservative bound for paired outcomes) on top of any healthy gap.
No flag fires on a *saturated* model, whose clean, PGD and AutoAttack accuracies are all
within noise of 100% (:func:`saturated`).

* ``robust_above_clean``: accuracy on a PGD attack's outputs exceeds clean accuracy by more
  than the noise threshold: the attack makes the model *more* accurate;
* ``aa_below_pgd20``: AutoAttack is below PGD-20 by more than :data:`HEALTHY_GAP_POINTS`
  plus the noise threshold. Calibration: on healthy models AutoAttack sits 2-4 points below
  PGD-20 -- the AR-AT paper's pairs (CIFAR-10 ResNet-18) are 52.13/49.02 (AR-AT, gap 3.11),
  48.89/46.50 (ablation "none", 2.39) and 51.34/47.96 (ablation "split-BN", 3.38); models
  whose gradients are masked lose ten points or more (Croce & Hein, ICML 2020, Sec. 5).
  On 1,000 images at 50% the threshold is 4 + 3 * 2.24 = 10.7 points, on 10,000 images
  4 + 3 * 0.71 = 6.1. A method whose larger gap is documented (:data:`EXPLAINED_GAPS`,
  MART) gets the measurement and the explanation instead of a masking warning;
* ``pgd_not_decreasing``: PGD accuracy does not fall as the number of steps grows
  (PGD-5 -> PGD-50 from the same random start) while PGD-5 is above noise of 0%.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from atzoo.attacks.sharding import write_json_atomic
from atzoo.errors import AtzooError, brief
from atzoo.files.safe_read import read_json_file

EVAL_FILE = "eval.json"
#: AutoAttack this far below PGD-20 is healthy (calibration: module docstring); the flag
#: needs this gap plus the noise threshold.
HEALTHY_GAP_POINTS = 4.0
#: Standard errors a gap must exceed to count as more than sampling noise.
NOISE_Z = 3.0
#: Keys that say which test images an evaluation used: another set is not merged.
_SET_KEYS = ("eval_set",)
_PGD_KEY = re.compile(r"^pgd(\d+)_acc$")
# Keys that describe the threat model: an evaluation under another one is not merged.
_THREAT_KEYS = ("norm", "eps")
# Keys computed from two attacks together: dropped when either is re-run without the other.
_PAIRED_KEYS = {"aa_subset_pgd20_acc": ("aa", "pgd20")}
#: Methods whose PGD-20 is known to sit further above AutoAttack than the healthy gap,
#: with the published evidence; their zoo card explains it.
EXPLAINED_GAPS: dict[str, str] = {
    "mart": ("MART's PGD-20 is known to overestimate its robustness (the AWP repository's AutoAttack table: "
             "MART 65.04 reported vs 56.29 AutoAttack), see zoo_cards/mart.md; rank it on AutoAttack"),
}


def weights_fingerprint(model: Any) -> str:
    """A hash of the evaluated weights: dtype, shape and bytes of every tensor of the
    model's state, in key order (16 hex digits of SHA-256).

    Key names are left out, so a timm network hashes the same with or without atzoo's
    ``net.`` wrapper prefix (the exported file holds timm's own keys).
    """
    import hashlib

    digest = hashlib.sha256()
    for _, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def test_digest(payload: dict[str, Any]) -> str | None:
    """The test split's content digest an evaluation recorded (None for older files)."""
    identity = payload.get("dataset_identity")
    test = identity.get("test") if isinstance(identity, dict) else None
    digest = test.get("digest") if isinstance(test, dict) else None
    return digest if isinstance(digest, str) else None


def binding(payload: dict[str, Any]) -> tuple[Any, ...]:
    """What a result is bound to: weights, data, threat model, image set (module docstring).

    An older payload without a weights fingerprint binds to ``None`` there, so it never
    merges with a new evaluation: its weights are unknown.
    """
    data = test_digest(payload) or payload.get("dataset")
    return (payload.get("weights_fingerprint"), data, *(payload.get(k) for k in _THREAT_KEYS + _SET_KEYS))


def binding_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Which of the four bindings differ between two payloads, in words (None: none)."""
    names = ["weights", "test data", "norm", "eps", "image set"]
    differ = [name for name, a, b in zip(names, binding(old), binding(new)) if a != b or a is None and name == "weights"]
    return ", ".join(differ) if differ else None


def read_eval_json(path: str | Path) -> dict[str, Any]:
    """The payload of ``path`` ({} when absent).

    Raises:
        AtzooError: the file exists but is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        payload = read_json_file(path, "eval file")
    except AtzooError as exc:
        raise AtzooError(f"{exc}; move it away to evaluate again") from None
    if not isinstance(payload, dict):
        raise AtzooError(f"{path} does not hold a JSON object; move it away to evaluate again")
    problem = _payload_problem(payload)
    if problem:
        raise AtzooError(f"{path} is damaged: {problem}; move it away to evaluate again")
    return payload


def _payload_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with the types of an eval.json written earlier (None: nothing)."""
    for key, value in payload.items():
        if key.endswith("_acc") and value is not None and (isinstance(value, bool)
                                                            or not isinstance(value, (int, float))):
            return f"'{key}' must be a number or null, got {brief(value)}"
    expected = {"previous": list, "flags": dict, "dataset": str, "norm": str}
    for key, kind in expected.items():
        if key in payload and payload[key] is not None and not isinstance(payload[key], kind):
            return f"'{key}' must be a {kind.__name__}, got {brief(payload[key])}"
    if "eps" in payload and (isinstance(payload["eps"], bool) or not isinstance(payload["eps"], (int, float))):
        return f"'eps' must be a number, got {brief(payload['eps'])}"
    return _examples_problem(payload.get("examples"))


def _examples_problem(examples: Any) -> str | None:
    """What is wrong with an ``examples`` entry (per-example outcomes), None when nothing."""
    if examples is None:
        return None
    n = examples.get("n") if isinstance(examples, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or not isinstance(examples.get("flags"), dict):
        return f"'examples' must hold a count 'n' and a 'flags' mapping, got {brief(examples)}"
    for name, text in examples["flags"].items():
        if not isinstance(text, str) or len(text) != 2 * ((n + 7) // 8) or not _is_hex(text):
            return f"'examples.flags.{name}' must be {(n + 7) // 8} bytes of hex for {n} examples"
    return None


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def merge_payloads(old: dict[str, Any], new: dict[str, Any], ran: list[str]) -> dict[str, Any]:
    """``new`` over ``old`` when both measured the same weights, data, threat model and images.

    Keys the new run left ``None`` keep their old value. Otherwise ``new`` becomes the top
    level and ``old`` (with its own ``previous``) is kept in ``previous``, whole.

    Args:
        old: the payload on disk ({} if none).
        new: the payload of the evaluation just run.
        ran: the attack names just run (``clean``, ``pgd20``, ``aa``, ...).
    """
    if not old:
        return dict(new)
    if binding_difference(old, new):
        previous = old.pop("previous", [])
        return {**new, "previous": previous + [old]}
    merged = dict(old)
    for key, value in new.items():
        if value is None and key in old:
            continue
        if isinstance(value, dict) and isinstance(old.get(key), dict) and key not in ("flags", "examples"):
            merged[key] = {**old[key], **value}
        else:
            merged[key] = value
    for key, attacks in _PAIRED_KEYS.items():
        if new.get(key) is None and any(a in ran for a in attacks):
            merged.pop(key, None)
    if isinstance(old.get("examples"), dict) and isinstance(new.get("examples"), dict):
        merged["examples"] = {**new["examples"],
                              "flags": {**old["examples"].get("flags", {}), **new["examples"].get("flags", {})}}
        merged.update(headline_accuracies(merged["examples"]))
    merged["flags"] = masking_flags(merged)
    return merged


# --------------------------------------------------------------------------- per-example outcomes


def encode_flags(flags: Any) -> str:
    """A boolean vector as the hex string of its packed bits (``numpy.packbits``, big-endian)."""
    import numpy as np

    return np.packbits(np.asarray(flags, dtype=bool)).tobytes().hex()


def decode_flags(text: str, n: int) -> Any:
    """The ``n`` booleans :func:`encode_flags` packed (a numpy bool array)."""
    import numpy as np

    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


def headline_accuracies(examples: dict[str, Any]) -> dict[str, Any]:
    """Headline accuracies (percent) from the per-example outcomes of one set of images.

    ``clean_acc``: correct clean. ``<name>_acc`` for every attack (``pgd<N>``, ``fgsm``,
    a registered attack) and ``autoattack_acc`` for AutoAttack: correct clean and under
    that attack, the attack *alone*. ``worst_case_acc`` (with two or more attacks): correct
    clean and under every attack run on the set. ``accuracy_on_attack_outputs``: each attack's
    accuracy on its outputs without the clean condition (read by the masking flags).

    Args:
        examples: ``{"n": N, "flags": {attack name: encode_flags(...)}}``.
    """
    n = int(examples.get("n") or 0)
    flags = {k: decode_flags(v, n) for k, v in (examples.get("flags") or {}).items()}
    if n < 1 or "clean" not in flags:
        return {}
    clean = flags["clean"]
    pct = lambda mask: 100.0 * float(mask.mean())  # noqa: E731
    attacks = sorted(k for k in flags if k != "clean")
    out: dict[str, Any] = {"clean_acc": pct(clean), "accuracy_on_attack_outputs": {k: pct(flags[k]) for k in attacks}}
    worst = clean.copy()
    for name in attacks:
        out["autoattack_acc" if name == "aa" else f"{name}_acc"] = pct(clean & flags[name])
        worst &= flags[name]
    if "aa" in flags:
        out["aa_n_examples"] = n
    out["worst_case_acc"] = pct(worst) if len(attacks) > 1 else None
    return out


def write_eval_json(run_dir: str | Path, payload: dict[str, Any], ran: list[str]) -> dict[str, Any]:
    """Merges ``payload`` into ``run_dir/eval.json`` (atomic write); returns the merged payload.

    The read-merge-write runs under :func:`merge_lock`, so evaluations of one run that
    finish at the same time (``atzoo eval --attacks aa`` beside ``--attacks pgd50``) each
    merge into the file the previous one wrote: no result is lost.
    """
    path = Path(run_dir) / EVAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with merge_lock(path.parent):
        merged = merge_payloads(read_eval_json(path), payload, ran)
        write_json_atomic(path, merged)
    return merged


@contextmanager
def merge_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the run directory itself for the duration of a merge.

    The directory, not a file in it, is locked: nothing is added to the run, and the
    training lock (``.atzoo.lock``) is untouched. Other evaluations wait (a merge takes
    milliseconds). Where ``flock`` does not exist or the file system refuses it, the merge
    runs unlocked, as before.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock (some network mounts)
            pass
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def standard_error(percent: float, n: int) -> float:
    """Binomial standard error, in points, of an accuracy of ``percent`` on ``n`` images.

    At 0% or 100% the plain formula gives 0; the rule of three (``3 / n``, a 95% bound on
    a rate never observed) is the floor, so a count of zero still carries its uncertainty.
    """
    if n < 1:
        return float("inf")
    p = min(max(percent / 100.0, 0.0), 1.0)
    return 100.0 * max((p * (1.0 - p) / n) ** 0.5, 1.0 / n)


def noise_threshold(percent: float, n: int) -> float:
    """Points a difference of two accuracies near ``percent`` on ``n`` images must exceed
    to count as more than sampling noise: :data:`NOISE_Z` x sqrt(2) x the standard error."""
    return NOISE_Z * (2.0 ** 0.5) * standard_error(percent, n)


def _n_images(p: dict[str, Any]) -> int:
    examples = p.get("examples")
    n = examples.get("n") if isinstance(examples, dict) else None
    n = n if isinstance(n, int) else p.get("aa_n_examples") or p.get("n_examples")
    return int(n) if isinstance(n, int) and n > 0 else 0


def saturated(p: dict[str, Any]) -> bool:
    """Clean, PGD and AutoAttack accuracies all within noise of 100% (nothing to flag)."""
    n = _n_images(p)
    values = [p.get("clean_acc"), p.get("autoattack_acc"), *_pgd_values(p).values()]
    values = [v for v in values if isinstance(v, (int, float))]
    return bool(values) and n > 0 and all(100.0 - v <= noise_threshold(100.0, n) + 1e-9 for v in values)


def masking_flags(payload: dict[str, Any]) -> dict[str, Any]:
    """The gradient-masking flags of a payload (see the module docstring).

    Each flag is ``True``/``False``, or ``None`` when the numbers it needs are missing (or
    the model is saturated); ``any`` is True when one flag is and no documented
    explanation covers it; ``messages`` says what each raised flag measured;
    ``explained`` holds the explanation of a raised flag a method's card documents.
    """
    if saturated(payload):
        flags: dict[str, Any] = {"robust_above_clean": None, "aa_below_pgd20": None, "pgd_not_decreasing": None}
        return {**flags, "any": False, "messages": [], "explained": {}, "saturated": True}
    flags = {
        "robust_above_clean": _robust_above_clean(payload),
        "aa_below_pgd20": _aa_below_pgd(payload),
        "pgd_not_decreasing": _pgd_not_decreasing(payload),
    }
    explained: dict[str, str] = {}
    reason = EXPLAINED_GAPS.get(str(payload.get("method")))
    if flags["aa_below_pgd20"] and reason:
        explained["aa_below_pgd20"] = f"{_MESSAGES['aa_below_pgd20'](payload, masking=False)}: {reason}"
    messages = [_MESSAGES[name](payload) for name, raised in flags.items() if raised and name not in explained]
    return {**flags, "any": any(v is True and k not in explained for k, v in flags.items()),
            "messages": messages, "explained": explained, "saturated": False}


def _pgd_values(p: dict[str, Any]) -> dict[str, float]:
    """Each PGD's headline accuracy (``pgd<N>_acc``)."""
    return {k: float(v) for k, v in p.items() if _PGD_KEY.match(k) and isinstance(v, (int, float))}


def _pgd_outputs(p: dict[str, Any]) -> dict[str, float]:
    """Each PGD's accuracy on its outputs, without the clean condition (``accuracy_on_attack_outputs``)."""
    raw = p.get("accuracy_on_attack_outputs") or p.get("accuracy_alone") or {}  # accuracy_alone: older files
    return {f"{k}_acc": float(v) for k, v in raw.items() if _PGD_KEY.match(f"{k}_acc") and v is not None}


def _robust_above_clean(p: dict[str, Any]) -> bool | None:
    clean, outputs = p.get("clean_acc"), _pgd_outputs(p)
    if clean is None or not outputs:
        return None
    return max(outputs.values()) - clean > noise_threshold(clean, _n_images(p) or 1)


def _pgd_reference(p: dict[str, Any]) -> float | None:
    """PGD-20 accuracy on the AutoAttack images (every attack of one call shares them)."""
    paired = p.get("aa_subset_pgd20_acc")  # older files: PGD-20 on AutoAttack's subset
    return paired if paired is not None else p.get("pgd20_acc")


def aa_gap_threshold(p: dict[str, Any]) -> float:
    """Points PGD-20 must exceed AutoAttack by to raise ``aa_below_pgd20``."""
    pgd = _pgd_reference(p)
    return HEALTHY_GAP_POINTS + noise_threshold(pgd if pgd is not None else 50.0, _n_images(p) or 1)


def _aa_below_pgd(p: dict[str, Any]) -> bool | None:
    aa, pgd = p.get("autoattack_acc"), _pgd_reference(p)
    if aa is None or pgd is None:
        return None
    return pgd - aa > aa_gap_threshold(p)


def _steps_accuracies(p: dict[str, Any]) -> list[tuple[int, float]]:
    steps = (p.get("pgd_steps") or {}).get("acc") or {}
    return sorted((int(k), float(v)) for k, v in steps.items())


def _pgd_not_decreasing(p: dict[str, Any]) -> bool | None:
    accs = _steps_accuracies(p)
    if len(accs) < 2:
        return None
    first, last = accs[0][1], accs[-1][1]
    n = int((p.get("pgd_steps") or {}).get("n_examples") or 0) or 1
    # With nothing left to attack (within noise of 0 %) the curve cannot fall; that is not masking.
    return first > noise_threshold(0.0, n) and last >= first


def _images(p: dict[str, Any]) -> str:
    return f"{_n_images(p):,} images"


def _aa_message(p: dict[str, Any], masking: bool = True) -> str:
    gap = _pgd_reference(p) - p["autoattack_acc"]  # type: ignore[operator]
    text = (f"PGD-20 is {gap:.1f} points above AutoAttack on {_images(p)} ({_pgd_reference(p):.2f}% vs "
            f"{p['autoattack_acc']:.2f}%; beyond the healthy {HEALTHY_GAP_POINTS:g} points plus noise, "
            f"threshold {aa_gap_threshold(p):.1f})")
    return text + (": PGD overestimates robustness (gradient masking?)" if masking else "")


def _above_clean_message(p: dict[str, Any]) -> str:
    name, value = max(_pgd_outputs(p).items(), key=lambda kv: kv[1])
    label = f"PGD-{_PGD_KEY.match(name).group(1)}"  # type: ignore[union-attr]
    return (f"{label} leaves {value - p['clean_acc']:.1f} points more images correct than clean inputs on "
            f"{_images(p)} ({value:.2f}% vs {p['clean_acc']:.2f}%): the attack is not working (gradient masking?)")


_MESSAGES = {
    "robust_above_clean": _above_clean_message,
    "aa_below_pgd20": _aa_message,
    "pgd_not_decreasing": lambda p: (
        f"PGD accuracy does not fall with more steps on {int((p.get('pgd_steps') or {}).get('n_examples') or 0):,} "
        "images (" + ", ".join(f"PGD-{s} {a:.2f}%" for s, a in _steps_accuracies(p)) + "): gradients may be masked"
    ),
}
