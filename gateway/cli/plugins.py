"""Commands other packages add to `sealgw` through the `sealgw.commands` entry-point group.

An entry point names a small *descriptor* object, not the command's module:

    [project.entry-points."sealgw.commands"]
    master = "master_station.command:COMMAND"

The descriptor has `help: str` (one line for `sealgw --help`) and `register(subparsers)`, which
imports the real command module and adds its parser. Descriptor modules import nothing heavy, so:
- `sealgw run` (and every built-in command) never reads entry points at all;
- `sealgw --help` loads the descriptors only, to print each command's help line;
- `sealgw master ...` calls `register` of `master` alone, so only that module is imported.
This keeps the gateway free of imports of the simulator and the master station (the dependency
points from them to the gateway, never back) and cold start fast. A missing or broken plug-in
becomes a `PluginError` with a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol, TypeAlias

from gateway.errors import GatewayError

__all__ = [
    "GROUP",
    "CommandPlugin",
    "PluginError",
    "UnknownCommandError",
    "add_plugin_commands",
    "discover",
]

_log = logging.getLogger(__name__)

GROUP = "sealgw.commands"
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class PluginError(GatewayError):
    """A command's entry point is missing, cannot be imported, or is not a command descriptor."""

    def __init__(self, message: str, *, command: str) -> None:
        super().__init__(message)
        self.command = command


class UnknownCommandError(PluginError):
    """No built-in command and no installed plug-in has this name (a usage error)."""


class CommandPlugin(Protocol):
    """What an entry point of the `sealgw.commands` group must name."""

    help: str

    def register(self, commands: SubParsers) -> None: ...


@dataclass(frozen=True, slots=True)
class _Found:
    """A discovered entry point, not yet loaded."""

    name: str
    value: str
    entry_point: EntryPoint


def discover() -> dict[str, _Found]:
    """The plug-in commands installed with sealgw, by name; nothing is imported."""
    found: dict[str, _Found] = {}
    for entry in entry_points(group=GROUP):
        if entry.name in found:
            _log.warning("command %s is declared twice; using %s", entry.name, entry.value)
        found[entry.name] = _Found(entry.name, entry.value, entry)
    return found


def add_plugin_commands(commands: SubParsers, wanted: str | None, reserved: Sequence[str]) -> None:
    """Add every plug-in: fully for `wanted`, as a one-line stub for the others.

    A stub only names the command in `sealgw --help`; it never runs, because `main` registers
    the command fully whenever it is the one asked for.
    """
    plugins = discover()
    if wanted is not None and wanted not in plugins and wanted not in reserved:
        names = ", ".join(sorted([*reserved, *plugins]))
        raise UnknownCommandError(f"unknown command {wanted!r} (commands: {names})", command=wanted)
    for name in sorted(plugins):
        if name in reserved:
            _log.warning("plug-in command %s is shadowed by a built-in command", name)
            continue
        plugin = plugins[name]
        if name == wanted:
            _register(plugin, commands)
        else:
            commands.add_parser(name, help=_help_line(plugin), add_help=False)


def load(plugin: _Found) -> CommandPlugin:
    """The descriptor an entry point names; PluginError if it is missing or broken."""
    try:
        loaded: object = plugin.entry_point.load()
    except Exception as exc:  # noqa: BLE001 (any import failure of a plug-in is reported alike)
        _log.debug("loading %s failed", plugin.value, exc_info=True)
        hint = "; is sealgw installed completely? (pip install .)"
        raise PluginError(
            f"command {plugin.name!r} is not available: cannot load {plugin.value} "
            f"({type(exc).__name__}: {exc})" + (hint if isinstance(exc, ImportError) else ""),
            command=plugin.name,
        ) from None
    if not isinstance(getattr(loaded, "help", None), str) or not callable(
        getattr(loaded, "register", None)
    ):
        raise PluginError(
            f"command {plugin.name!r}: {plugin.value} is not a command descriptor "
            "(it needs `help` and `register(subparsers)`)",
            command=plugin.name,
        )
    return loaded  # type: ignore[return-value]  # checked above: help and register exist


def _register(plugin: _Found, commands: SubParsers) -> None:
    descriptor = load(plugin)
    try:
        descriptor.register(commands)
    except Exception as exc:  # noqa: BLE001 (the command's own module failed to import)
        _log.debug("registering %s failed", plugin.name, exc_info=True)
        raise PluginError(
            f"command {plugin.name!r} is not available: {type(exc).__name__}: {exc}",
            command=plugin.name,
        ) from None


def _help_line(plugin: _Found) -> str:
    try:
        return load(plugin).help
    except PluginError as exc:
        _log.debug("%s", exc)
        return f"(unavailable: cannot load {plugin.value})"
