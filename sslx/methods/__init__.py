"""Self-supervised methods, found rather than listed.

Every module of this package is imported and each Method subclass defined there with a `name` is registered under
it: a new method is one file here (its class, its `config_section` and `default_config()`), and no line elsewhere.
A method kept outside sslx is named `config.method='<module>:<Class>'` (or a dotted `'<package>.<module>'` that
defines one Method subclass), imported from the Python path.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import ml_collections

from sslx.methods.base import Method

EXTERNAL_HINT = "or a method of your own as '<module>:<Class>', its module importable from PYTHONPATH"


def _defined_methods(module: types.ModuleType) -> list[type[Method]]:
    """The concrete Method subclasses `module` itself defines (not those it imports)."""
    return [value for value in vars(module).values()
            if inspect.isclass(value) and issubclass(value, Method) and value.__module__ == module.__name__
            and not inspect.isabstract(value)]


def _discover() -> dict[str, type[Method]]:
    """name -> class for every named Method subclass in the modules of this package, in module order."""
    found: dict[str, type[Method]] = {}
    for info in pkgutil.iter_modules(__path__):
        for cls in _defined_methods(importlib.import_module(f"{__name__}.{info.name}")):
            name = vars(cls).get("name")   # its own, not inherited: a subclass without one is not a method
            if not name:
                continue
            if name in found:
                raise ImportError(f"two methods are named {name!r}: {found[name].__qualname__} and "
                                  f"{cls.__qualname__}; give each Method subclass its own `name`")
            found[name] = cls
    return found


METHODS: dict[str, type[Method]] = _discover()


def _import_external(spec: str) -> type[Method]:
    """The Method subclass `spec` ('<module>:<Class>' or '<package>.<module>') names, from the Python path."""
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"config.method={spec!r}: module {module_name!r} does not import ({error}); put the "
                         f"folder that holds it on PYTHONPATH") from None
    if class_name:
        cls = getattr(module, class_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, Method)) or inspect.isabstract(cls):
            raise ValueError(f"config.method={spec!r}: {module_name} has no concrete Method subclass "
                             f"{class_name!r} (it defines {[c.__name__ for c in _defined_methods(module)]})")
        return cls
    defined = _defined_methods(module)
    if len(defined) != 1:
        raise ValueError(f"config.method={spec!r}: {module_name} defines {len(defined)} Method subclasses "
                         f"{[c.__name__ for c in defined]}; name one as '{module_name}:<Class>'")
    return defined[0]


def method_class(spec: str) -> type[Method]:
    """The Method subclass config.method names: a registered name, or '<module>:<Class>' / '<module.path>'."""
    if spec in METHODS:
        return METHODS[spec]
    if ":" not in spec and "." not in spec:
        raise ValueError(f"config.method={spec!r} is unknown; use one of {sorted(METHODS)}, {EXTERNAL_HINT}.")
    return _import_external(spec)


def config_sections(*specs: str) -> dict[str, ml_collections.ConfigDict]:
    """Each method's own config section and its defaults, for every registered method and those `specs` name
    (external ones add theirs). Two methods may share a section (MoCo v2 and v3) only with the same defaults."""
    sections: dict[str, ml_collections.ConfigDict] = {}
    owners: dict[str, type[Method]] = {}
    for cls in [*METHODS.values(), *map(method_class, specs)]:
        section = cls.config_section
        if not section:
            continue
        defaults = cls.default_config()
        if section not in sections:
            sections[section], owners[section] = defaults, cls
        elif sections[section].to_dict() != defaults.to_dict():
            raise ValueError(f"{cls.__module__}.{cls.__qualname__} and {owners[section].__module__}."
                             f"{owners[section].__qualname__} both define config.{section}, with different "
                             f"defaults; give one of them another config_section")
    return sections


def build_method(config: ml_collections.ConfigDict, num_classes: int, total_steps: int,
                 steps_per_epoch: int = 0) -> Method:
    """The method config.method names; `steps_per_epoch` turns its settings given in epochs into steps."""
    return method_class(config.method)(config, num_classes, total_steps, steps_per_epoch)
