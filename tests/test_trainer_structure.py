"""The trainer is composed, not inherited (docs/architecture.md, engine).

Every class of ``atzoo/engine`` has its own ``__init__`` (or is a dataclass), inherits
from no other engine class, reads on ``self`` only what it defines or sets itself, sets no
attribute of another object, and touches no underscore name of another object. The
checks read the source (AST), so they hold for every path through the code, not only
the ones a training run happens to take.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import textwrap
from pathlib import Path

import pytest

import atzoo.engine

ENGINE = Path(atzoo.engine.__file__).parent
MODULES = sorted(p.stem for p in ENGINE.glob("*.py") if p.stem != "__init__")
#: The trainer and its components: here no code sets an attribute of any other object
#: (elsewhere in the engine, functions may fill in objects they made, e.g. a config copy).
COMPONENT_MODULES = {"trainer", "logs", "resume", "finish"}

#: Writes into another object that are part of a library's interface, not our own state.
#: ``accelerator.step`` is Accelerate's gradient-accumulation counter, reset per epoch.
ALLOWED_FOREIGN_WRITES = {("trainer", "self.acc.step")}
#: Underscore names of libraries, not of engine objects: torch's BN base class, and the
#: file writer of torch's SummaryWriter (TensorBoard hparams of the final row, trackers.py).
ALLOWED_FOREIGN_PRIVATE = {"_BatchNorm", "_get_file_writer"}


def engine_classes() -> list[type]:
    found = []
    for name in MODULES:
        module = importlib.import_module(f"atzoo.engine.{name}")
        found += [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    return found


def class_attribute_problems(source: str, external_names: dict[str, set[str]] | None = None) -> list[str]:
    """``Class.attr`` for each ``self.attr`` a class reads without defining or setting it.

    ``external_names``: per class, names it inherits from a library base (e.g. nn.Module).
    """
    problems = []
    for cls in (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)):
        own = set((external_names or {}).get(cls.name, set()))
        for item in cls.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(item.name)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                own.add(item.target.id)  # a dataclass field
            elif isinstance(item, ast.Assign):
                own |= {t.id for t in item.targets if isinstance(t, ast.Name)}
        reads = []
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                if isinstance(node.ctx, ast.Store):
                    own.add(node.attr)
                else:
                    reads.append(node.attr)
        problems += sorted({f"{cls.name}.{attr}" for attr in reads if attr not in own})
    return problems


def foreign_access_problems(source: str, *, strict: bool = True) -> list[str]:
    """Underscore names used on another object, and attributes set on another object.

    ``strict``: every write to another object's attribute counts; otherwise only writes
    into an object a class holds (``self.part.attr = ...``).
    """
    problems = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or node.attr in ALLOWED_FOREIGN_PRIVATE:
            continue
        on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
        if node.attr.startswith("_") and not node.attr.startswith("__") and not on_self:
            problems.append(f"private access: {ast.unparse(node)} (line {node.lineno})")
        if isinstance(node.ctx, ast.Store) and not on_self and (strict or _rooted_at_self(node.value)):
            problems.append(f"foreign write: {ast.unparse(node)} (line {node.lineno})")
    return problems


def _rooted_at_self(node: ast.expr) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id == "self"


def instance_attributes(cls: type) -> set[str]:
    """``self.X`` a (library) class sets in its own methods, from its source when available."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return set()
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
            and isinstance(n.value, ast.Name) and n.value.id == "self"}


def test_the_checks_catch_the_mixin_shape_they_forbid() -> None:
    """A mixin reading what another class sets, and a caller using its private method, are found."""
    mixin = (
        "class Logging:\n"
        "    def log(self):\n"
        "        return self.last_batch[3]\n"
        "class Trainer(Logging):\n"
        "    def __init__(self):\n"
        "        self.last_batch = None\n"
        "def train(trainer):\n"
        "    trainer._event('x')\n"
        "    trainer.claim = 1\n"
    )
    assert class_attribute_problems(mixin) == ["Logging.last_batch"]
    assert sorted(foreign_access_problems(mixin)) == ["foreign write: trainer.claim (line 9)",
                                                      "private access: trainer._event (line 8)"]


@pytest.mark.parametrize("cls", engine_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_engine_class_has_its_own_init_and_no_engine_base(cls: type) -> None:
    engine_bases = [b.__qualname__ for b in cls.__mro__[1:] if b.__module__.startswith("atzoo.engine")]
    assert engine_bases == [], f"{cls.__name__} inherits from engine classes {engine_bases}: compose instead"
    assert "__init__" in vars(cls) or dataclasses.is_dataclass(cls), f"{cls.__name__} has no __init__ of its own"


@pytest.mark.parametrize("name", MODULES)
def test_engine_classes_read_only_attributes_they_define_set_or_receive(name: str) -> None:
    module = importlib.import_module(f"atzoo.engine.{name}")
    inherited = {}  # names that come with a library base class (nn.Module's methods, a tracker's writer)
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ == module.__name__:
            inherited[cls.__name__] = {a for b in cls.__mro__[1:] for a in {*dir(b), *instance_attributes(b)}}
    assert class_attribute_problems(inspect.getsource(module), inherited) == []


@pytest.mark.parametrize("name", MODULES)
def test_engine_code_calls_no_private_method_of_another_object_and_sets_none_of_its_attributes(name: str) -> None:
    source = (ENGINE / f"{name}.py").read_text(encoding="utf-8")
    problems = [p for p in foreign_access_problems(source, strict=name in COMPONENT_MODULES)
                if not any(name == module and f": {expr} " in p for module, expr in ALLOWED_FOREIGN_WRITES)]
    assert problems == []


def test_the_trainer_is_composed_of_its_components() -> None:
    """The Trainer's parts are separate classes it holds, each with explicit collaborators."""
    from atzoo.engine.finish import Finisher
    from atzoo.engine.logs import RunLog
    from atzoo.engine.resume import CheckpointKeeper
    from atzoo.engine.trainer import Trainer

    assert Trainer.__bases__ == (object,)
    for part in (RunLog, CheckpointKeeper, Finisher):
        params = inspect.signature(part.__init__).parameters
        assert len(params) > 3, f"{part.__name__} takes its collaborators explicitly"
        assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())
