"""Remote config updates: build the new file, validate it with the real loader, write it safely.

A new config arrives whole (TOML text) or as a patch (a JSON object merged into the file's
table: objects merge, anything else replaces, null deletes). Either way the result is
validated by gateway.config.loader exactly as `sealgw config check` would, then compared with
the running config:

- keys that would move, resize or re-key the event buffer (`[buffer]`, `gateway.state_dir`,
  `gateway.id`) are REFUSED, naming the key: remote config never rebuilds, moves or drops the
  buffer (a peer product lost its data exactly that way). Change them on site, then restart;
- a change of `authorization.master_key_file` (the key that signs this very command) and a
  switch of `uplink.url` from `mqtts://` to plain `mqtt://` are REFUSED with an AuthError whose
  code is a `RemoteRefusal`: whoever holds the master key may reconfigure the gateway, but not
  hand the gateway's trust to another key or its traffic to the clear;
- `log.level` applies live; every other change is written and takes effect at the next start.

The file is replaced atomically: temp file, fsync, the previous file kept as `.bak`, rename,
fsync of the directory. A patch rewrites the file in a plain canonical TOML form (comments are
not kept; the `.bak` has them).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.config.loader import parse_config
from gateway.config.model import GatewayConfig
from gateway.errors import AuthError, ConfigError

__all__ = [
    "LIVE_KEYS",
    "PROTECTED_KEYS",
    "PreparedConfig",
    "RemoteRefusal",
    "changed_keys",
    "merge_patch",
    "prepare_config",
    "render_toml",
    "write_atomically",
]

LIVE_KEYS = frozenset({"log.level"})
PROTECTED_KEYS = ("buffer", "gateway.state_dir", "gateway.id")
MAX_TEXT = 60 * 1024
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class RemoteRefusal(StrEnum):
    """Why a remote config was refused although it is valid (the reply's `error`)."""

    TRUST_KEY_CHANGE = "trust_key_change"
    TRANSPORT_DOWNGRADE = "transport_downgrade"


@dataclass(frozen=True, slots=True)
class PreparedConfig:
    """A validated new config, its file text and what differs from the running config."""

    text: str
    config: GatewayConfig
    changed: tuple[str, ...]

    @property
    def restart_keys(self) -> tuple[str, ...]:
        """Changed keys that take effect only after a restart."""
        return tuple(key for key in self.changed if key not in LIVE_KEYS)


def prepare_config(
    running: GatewayConfig, *, text: str | None = None, patch: Mapping[str, Any] | None = None
) -> PreparedConfig:
    """Build and validate the new config; ConfigError names the offending key."""
    source = _source(running)
    if (text is None) == (patch is None):
        raise ConfigError("", "give exactly one of `toml` (the whole file) or `patch`")
    if patch is not None:
        text = render_toml(merge_patch(_read_table(source), patch))
    assert text is not None
    if len(text.encode("utf-8")) > MAX_TEXT:
        raise ConfigError("", f"config text exceeds {MAX_TEXT} bytes")
    config = parse_config(_parse_toml(text), base_dir=source.parent, source=source)
    _refuse_protected(running, config)
    return PreparedConfig(text, config, changed_keys(running, config))


def write_atomically(path: Path, text: str) -> Path:
    """Replace `path` with `text` atomically, keeping the previous file as `path.bak`."""
    backup = path.with_name(path.name + ".bak")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    try:
        _write_synced(tmp, text.encode("utf-8"), mode)
        if path.exists():
            shutil.copy2(path, backup)
            _fsync_file(backup)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return backup


def merge_patch(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `patch` applied: tables merge, other values replace, None deletes."""
    merged = dict(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged


def changed_keys(old: Any, new: Any, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys whose values differ between two configs (or sections)."""
    return tuple(_diff(old, new, prefix))


def render_toml(table: Mapping[str, Any]) -> str:
    """TOML text for a table of strings, numbers, booleans, arrays and tables."""
    lines = list(_render_table(table, ()))
    text = "\n".join(lines).strip() + "\n"
    if _parse_toml(text) != _plain(table):
        raise ConfigError("", "the patched config cannot be written as TOML")
    return text


# -- validation helpers -------------------------------------------------------------------------


def _source(running: GatewayConfig) -> Path:
    if running.source is None:
        raise ConfigError("", "the running config was not loaded from a file; cannot update it")
    return running.source


def _read_table(source: Path) -> dict[str, Any]:
    try:
        return _parse_toml(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("", f"cannot read {source}: {exc.strerror}") from None


def _parse_toml(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}") from None


def _refuse_protected(running: GatewayConfig, new: GatewayConfig) -> None:
    if new.authorization.master_key_file != running.authorization.master_key_file:
        raise AuthError(
            "authorization.master_key_file cannot be changed remotely: the master key would"
            " hand the gateway to another key (change it on site)",
            code=RemoteRefusal.TRUST_KEY_CHANGE,
        )
    if running.uplink.url.startswith("mqtts://") and not new.uplink.url.startswith("mqtts://"):
        raise AuthError(
            "uplink.url cannot be switched from mqtts:// to plain mqtt:// remotely",
            code=RemoteRefusal.TRANSPORT_DOWNGRADE,
        )
    for key in changed_keys(running, new):
        if key.startswith(PROTECTED_KEYS):
            raise ConfigError(
                key,
                "cannot be changed remotely: remote config never moves, resizes or rebuilds "
                "the event buffer (change it on site, then restart)",
            )


def _diff(old: Any, new: Any, prefix: str) -> Iterator[str]:
    if dataclasses.is_dataclass(old) and type(old) is type(new):
        for spec_field in dataclasses.fields(old):
            if spec_field.name == "source":
                continue
            yield from _diff(
                getattr(old, spec_field.name),
                getattr(new, spec_field.name),
                f"{prefix}{spec_field.name}.",
            )
    elif old != new:
        yield prefix.rstrip(".")


# -- file writing -------------------------------------------------------------------------------


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- TOML rendering -----------------------------------------------------------------------------


def _render_table(table: Mapping[str, Any], path: tuple[str, ...]) -> Iterator[str]:
    scalars = {k: v for k, v in table.items() if not _is_table(v) and not _is_table_array(v)}
    for key, value in scalars.items():
        yield f"{_key(key)} = {_value(value)}"
    for key, value in table.items():
        if _is_table(value):
            yield ""
            yield f"[{_dotted((*path, key))}]"
            yield from _render_table(value, (*path, key))
        elif _is_table_array(value):
            for item in value:
                yield ""
                yield f"[[{_dotted((*path, key))}]]"
                yield from _render_table(item, (*path, key))


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_key(part) for part in path)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError("", f"a {type(value).__name__} cannot be written to the config")


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif 0xD800 <= ord(char) <= 0xDFFF:
            raise ConfigError("", "a string in the config is not valid Unicode")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _plain(value: Any) -> Any:
    """A table as tomllib would return it (for the round-trip check)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
