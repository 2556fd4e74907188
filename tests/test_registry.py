"""The Registry: registration, duplicates, unknown names with suggestions, prefixes."""

from __future__ import annotations

import pytest

from atzoo.errors import AtzooError, RegistryError
from atzoo.registry import METHODS, Registry, get_registry, list_methods


def make_registry() -> Registry:
    registry: Registry = Registry("widget")

    @registry.register("resnet18")
    def resnet18() -> str:
        return "r18"

    @registry.register("wrn34_10")
    def wrn() -> str:
        return "wrn"

    return registry


def test_register_and_get_returns_the_object() -> None:
    registry = make_registry()
    assert registry.get("resnet18")() == "r18"
    assert registry.names() == ["resnet18", "wrn34_10"]
    assert "wrn34_10" in registry and "vgg" not in registry
    assert len(registry) == 2


def test_duplicate_name_is_an_error() -> None:
    registry = make_registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.add("resnet18", object())


def test_unknown_name_lists_choices_and_suggests_closest() -> None:
    registry = make_registry()
    with pytest.raises(RegistryError) as info:
        registry.get("resnet19")
    message = str(info.value)
    assert "unknown widget 'resnet19'" in message
    assert "Did you mean 'resnet18'?" in message
    assert "resnet18, wrn34_10" in message
    assert isinstance(info.value, AtzooError)


def test_unknown_name_far_from_everything_has_no_suggestion() -> None:
    with pytest.raises(RegistryError) as info:
        make_registry().get("zzzzzz")
    assert "Did you mean" not in str(info.value)


def test_prefix_resolver() -> None:
    registry = make_registry()
    registry.register_prefix("timm", lambda rest: f"timm model {rest}", help="any timm model")
    assert registry.get("timm:resnet50") == "timm model resnet50"
    assert "timm:anything" in registry
    assert registry.prefixes() == {"timm": "any timm model"}
    with pytest.raises(RegistryError, match="timm:..."):
        registry.get("nope:x")


def test_builtin_methods_registered() -> None:
    names = list_methods()
    assert {"standard", "at"} <= set(names)
    with pytest.raises(RegistryError, match="Did you mean 'standard'"):
        METHODS.get("standrd")


def test_get_registry_misspelt() -> None:
    with pytest.raises(RegistryError, match="Did you mean 'models'"):
        get_registry("modles")
