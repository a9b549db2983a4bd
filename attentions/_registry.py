"""A generic plugin registry (used for attentions and tasks): decorator registration, package discovery, plugin
folders, entry points, and keyword checking with "did you mean" answers."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import sys
from pathlib import Path
from typing import Any, get_type_hints


def require_int(owner: str, field: str, value: Any, minimum: int = 1, *, optional: bool = False) -> None:
    """Raise ``ValueError`` naming ``owner`` and ``field`` unless ``value`` is an int >= ``minimum`` (bools are not
    ints here; ``None`` passes when ``optional``). The one check behind every plugin's integer parameters."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        want = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{owner}: {field} must be {want}, got {value!r}")


class Registry:
    """Name -> class for one kind of plugin (``kind`` is used in messages: "attention", "task")."""

    def __init__(self, kind: str, base: type, package: str, entry_point_group: str, common: tuple[str, ...]):
        self.kind, self.base, self.package, self.group, self.common = kind, base, package, entry_point_group, common
        self._classes: dict[str, type] = {}
        self._discovered = False

    def register(self, name: str):
        """Class decorator registering ``cls`` under ``name``; refuses duplicates and non-subclasses."""

        def decorate(cls: type) -> type:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"registering {self.kind} {name!r} needs a {self.base.__name__} subclass, got {cls!r}")
            previous = self._classes.get(name)
            # The same module imported twice (a plugin folder loaded again, a Ray worker) re-registers one class.
            if previous is not None and previous.__qualname__ != cls.__qualname__:
                where = f"{previous.__module__}.{previous.__qualname__}"
                raise ValueError(f"{self.kind} {name!r} is already registered by {where}")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def discover(self) -> None:
        """Import every public module of the package and every entry-point plugin, once."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"{self.package}.{info.name}")
        for entry in importlib.metadata.entry_points(group=self.group):
            entry.load()

    def load_dir(self, folder: str | Path) -> list[str]:
        """Import every ``*.py`` in ``folder``; returns the names it added. Errors name the folder or file."""
        self.discover()
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"plugin folder {folder} does not exist or is not a directory")
        before = set(self._classes)
        for path in sorted(folder.glob("*.py")):
            module_name = f"attnbench_plugins.{path.stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                sys.modules.pop(module_name, None)
                raise ValueError(f"plugin file {path} failed to import: {type(exc).__name__}: {exc}") from exc
        return sorted(set(self._classes) - before)

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._classes)

    def get(self, name: str) -> type:
        self.discover()
        if name not in self._classes:
            close = difflib.get_close_matches(str(name), self._classes, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._classes))})")
        return self._classes[name]

    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        """The plugin's own keyword parameters (common ones excluded), annotations resolved.

        A subclass whose ``__init__`` forwards ``**kwargs`` to its parent takes the parent's keywords too (sortcut
        adds ``budget`` to sinkhorn's), so it declares only what it adds.
        """
        levels: list[dict[str, inspect.Parameter]] = []
        for klass in self.get(name).__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            hints, found, forwards = get_type_hints(init), {}, False
            for param in list(inspect.signature(init).parameters.values())[1:]:
                if param.kind is param.VAR_KEYWORD:
                    forwards = True
                elif param.kind is not param.VAR_POSITIONAL and param.name not in self.common:
                    found[param.name] = param.replace(annotation=hints.get(param.name, param.annotation))
            levels.append(found)
            if not forwards:
                break
        return {key: param for level in reversed(levels) for key, param in level.items()}  # parent's first

    def check_params(self, name: str, params: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming any keyword the plugin does not take."""
        known = self.parameters(name)
        for key in params:
            if key not in self.common and key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                accepted = ", ".join(known) or "none"
                raise ValueError(f"{self.kind} {name!r} has no parameter {key!r}{hint} (accepted: {accepted})")

    def build(self, name: str, **kwargs: Any):
        """Check the keywords, then construct the plugin."""
        cls = self.get(name)
        self.check_params(name, kwargs)
        return cls(**kwargs)
