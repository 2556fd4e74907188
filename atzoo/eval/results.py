"""``eval.json``: merging evaluations of one run, and the gradient-masking flags.

A run directory holds one ``eval.json``. Re-running some attacks on the same set of test
images (``eval_set``) updates their entries and keeps the others (an ``atzoo eval
--attacks aa`` after training keeps the clean and PGD numbers), and the headline
accuracies are recomputed from the per-example outcomes of every attack run on that set.
An evaluation under another threat model (dataset, norm or eps) or on another set of
images becomes the top level and the replaced payload is kept in its ``previous`` list,
so nothing is lost and no headline number mixes two sets of images.

Gradient-masking flags (Athalye et al., ICML 2018; Carlini et al., "On Evaluating
Adversarial Robustness", 2019, Sec. 5) are heuristics that say when the PGD numbers
should not be trusted:

* ``robust_above_clean``: a PGD accuracy exceeds the clean accuracy on the same examples;
* ``aa_below_pgd20``: AutoAttack alone is more than :data:`AA_GAP_POINTS` (6) points below
  PGD-20 alone on the same examples (PGD-20 is then far from the worst case). Calibration:
  on healthy models AutoAttack sits 2-4 points below PGD-20 -- the AR-AT paper's own pairs
  (PGD-20 vs AutoAttack, CIFAR-10 ResNet-18) are 52.13/49.02 (AR-AT, gap 3.11), 48.89/46.50
  (ablation "none", 2.39) and 51.34/47.96 (ablation "split-BN", 3.38); models whose
  gradients are masked lose ten points or more to AutoAttack (Croce & Hein, ICML 2020,
  Sec. 5). 6 points is about twice the largest healthy gap and well below a masked one;
* ``pgd_not_decreasing``: PGD accuracy does not fall as the number of steps grows
  (PGD-5 -> PGD-50 from the same random start).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from atzoo.attacks.sharding import write_json_atomic
from atzoo.errors import AtzooError, brief
from atzoo.files.safe_read import read_json_file

EVAL_FILE = "eval.json"
#: AutoAttack this many points below PGD-20 raises ``aa_below_pgd20`` (calibration: module docstring).
AA_GAP_POINTS = 6.0
#: Keys that say which test images an evaluation used: another set is not merged.
_SET_KEYS = ("eval_set",)
_PGD_KEY = re.compile(r"^pgd(\d+)_acc$")
# Keys that describe the threat model: an evaluation under another one is not merged.
_THREAT_KEYS = ("dataset", "norm", "eps")
# Keys computed from two attacks together: dropped when either is re-run without the other.
_PAIRED_KEYS = {"aa_subset_pgd20_acc": ("aa", "pgd20")}


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
    """``new`` over ``old``: keys the new run left ``None`` keep their old value.

    Args:
        old: the payload on disk ({} if none).
        new: the payload of the evaluation just run.
        ran: the attack names just run (``clean``, ``pgd20``, ``aa``, ...).
    """
    if not old:
        return dict(new)
    if any(old.get(k) != new.get(k) for k in _THREAT_KEYS + _SET_KEYS):
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

    ``clean_acc``: correct clean. ``pgd<N>_acc`` (any per-batch attack's ``<name>_acc``):
    correct clean and under that attack. ``autoattack_acc``: correct clean, under
    AutoAttack and under every other attack run on the set (the per-example worst case).
    ``accuracy_alone`` keeps each attack's accuracy alone, which the masking flags compare.

    Args:
        examples: ``{"n": N, "flags": {attack name: encode_flags(...)}}``.
    """
    n = int(examples.get("n") or 0)
    flags = {k: decode_flags(v, n) for k, v in (examples.get("flags") or {}).items()}
    if n < 1 or "clean" not in flags:
        return {}
    clean = flags["clean"]
    pct = lambda mask: 100.0 * float(mask.mean())  # noqa: E731
    out: dict[str, Any] = {"clean_acc": pct(clean), "accuracy_alone": {k: pct(v) for k, v in flags.items()}}
    worst = clean.copy()
    for name in sorted(k for k in flags if k not in ("clean", "aa")):  # pgd<N>, fgsm, registered attacks
        out[f"{name}_acc"] = pct(clean & flags[name])
        worst &= flags[name]
    if "aa" in flags:
        out["autoattack_acc"] = pct(worst & flags["aa"])
        out["aa_n_examples"] = n
    return out


def write_eval_json(run_dir: str | Path, payload: dict[str, Any], ran: list[str]) -> dict[str, Any]:
    """Merges ``payload`` into ``run_dir/eval.json`` (atomic write); returns the merged payload."""
    path = Path(run_dir) / EVAL_FILE
    merged = merge_payloads(read_eval_json(path), payload, ran)
    write_json_atomic(path, merged)
    return merged


def masking_flags(payload: dict[str, Any]) -> dict[str, Any]:
    """The gradient-masking flags of a payload (see the module docstring).

    Each flag is ``True``/``False``, or ``None`` when the numbers it needs are missing;
    ``any`` is True when one flag is; ``messages`` explains every raised flag.
    """
    flags: dict[str, Any] = {
        "robust_above_clean": _robust_above_clean(payload),
        "aa_below_pgd20": _aa_below_pgd(payload),
        "pgd_not_decreasing": _pgd_not_decreasing(payload),
    }
    messages = [_MESSAGES[name](payload) for name, raised in flags.items() if raised]
    return {**flags, "any": any(v is True for v in flags.values()), "messages": messages}


def _pgd_alone(p: dict[str, Any]) -> dict[str, float]:
    """Each PGD's accuracy alone (``accuracy_alone``), else its headline accuracy."""
    raw = p.get("accuracy_alone") or {}
    values = {k: v for k, v in p.items() if _PGD_KEY.match(k) and v is not None}
    values.update({f"{k}_acc": v for k, v in raw.items() if _PGD_KEY.match(f"{k}_acc") and v is not None})
    return values


def _robust_above_clean(p: dict[str, Any]) -> bool | None:
    clean = p.get("clean_acc")
    pgd = list(_pgd_alone(p).values())
    if clean is None or not pgd:
        return None
    return max(pgd) > clean


def _pgd_reference(p: dict[str, Any]) -> float | None:
    """PGD-20 accuracy alone on the AutoAttack examples when known, else its headline value."""
    raw = (p.get("accuracy_alone") or {}).get("pgd20")
    paired = raw if raw is not None else p.get("aa_subset_pgd20_acc")
    return paired if paired is not None else p.get("pgd20_acc")


def _aa_alone(p: dict[str, Any]) -> float | None:
    raw = (p.get("accuracy_alone") or {}).get("aa")
    return raw if raw is not None else p.get("autoattack_acc")


def _aa_below_pgd(p: dict[str, Any]) -> bool | None:
    aa, pgd = _aa_alone(p), _pgd_reference(p)
    if aa is None or pgd is None:
        return None
    return aa < pgd - AA_GAP_POINTS


def _steps_accuracies(p: dict[str, Any]) -> list[tuple[int, float]]:
    steps = (p.get("pgd_steps") or {}).get("acc") or {}
    return sorted((int(k), float(v)) for k, v in steps.items())


def _pgd_not_decreasing(p: dict[str, Any]) -> bool | None:
    accs = _steps_accuracies(p)
    if len(accs) < 2:
        return None
    first, last = accs[0][1], accs[-1][1]
    # With nothing left to attack (0 %) the curve cannot fall; that is not masking.
    return first > 0 and last >= first


_MESSAGES = {
    "robust_above_clean": lambda p: (
        f"PGD accuracy ({max(_pgd_alone(p).values()):.2f}%) is above "
        f"clean accuracy ({p['clean_acc']:.2f}%): the attack is not working (gradient masking?)"
    ),
    "aa_below_pgd20": lambda p: (
        f"AutoAttack ({_aa_alone(p):.2f}%) is more than {AA_GAP_POINTS:g} points below PGD-20 "
        f"({_pgd_reference(p):.2f}%): PGD overestimates robustness (gradient masking?)"
    ),
    "pgd_not_decreasing": lambda p: (
        "PGD accuracy does not fall with more steps ("
        + ", ".join(f"PGD-{s} {a:.2f}%" for s, a in _steps_accuracies(p))
        + "): gradients may be masked"
    ),
}
