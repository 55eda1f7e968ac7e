"""Load and validate a TOML config into gateway.config.model dataclasses, naming any bad key."""

from __future__ import annotations

import dataclasses
import re
import stat
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError

_SKIP_FIELDS = {"source"}


def load_config(path: Path | str) -> GatewayConfig:
    """Read, parse and validate the config file at `path`."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {source}: {exc.strerror}") from exc
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{source} is not valid TOML: {exc}") from exc
    return parse_config(table, base_dir=source.parent, source=source)


def parse_config(
    table: Mapping[str, Any], *, base_dir: Path, source: Path | None = None
) -> GatewayConfig:
    """Validate a parsed TOML table; relative paths are taken from `base_dir`."""
    values: GatewayConfig = _build(GatewayConfig, table, "", base_dir)
    config = dataclasses.replace(values, source=source)
    _check_cross_fields(config)
    return config


def _build(cls: type[Any], table: Any, prefix: str, base_dir: Path) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(prefix.rstrip("."), "expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _SKIP_FIELDS}
    for key in table:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}{key}", f"unknown key (known: {known})")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, spec_field in fields.items():
        key = f"{prefix}{name}"
        if name in table:
            value = _coerce(hints[name], table[name], key, base_dir)
            _check_spec(spec_field.metadata, value, key)
            kwargs[name] = value
        elif _is_required(spec_field):
            raise ConfigError(key, "missing required key")
    return cls(**kwargs)


def _is_required(spec_field: dataclasses.Field[Any]) -> bool:
    return (
        spec_field.default is dataclasses.MISSING
        and spec_field.default_factory is dataclasses.MISSING
    )


def _coerce(hint: Any, value: Any, key: str, base_dir: Path) -> Any:
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [arg for arg in get_args(hint) if arg is not type(None)]
        return _coerce(options[0], value, key, base_dir)
    if origin is Literal:
        return _coerce_literal(get_args(hint), value, key)
    if origin is tuple:
        return _coerce_tuple(get_args(hint)[0], value, key, base_dir)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.", base_dir)  # type: ignore[arg-type]
    return _coerce_scalar(hint, value, key, base_dir)


def _coerce_literal(choices: tuple[Any, ...], value: Any, key: str) -> Any:
    if value in choices and type(value) is type(choices[0]):
        return value
    allowed = ", ".join(repr(choice) for choice in choices)
    raise ConfigError(key, f"expected one of {allowed}, got {value!r}")


def _coerce_tuple(item_hint: Any, value: Any, key: str, base_dir: Path) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected an array, got {_type_name(value)}")
    return tuple(
        _coerce(item_hint, item, f"{key}[{index}]", base_dir) for index, item in enumerate(value)
    )


def _coerce_scalar(hint: Any, value: Any, key: str, base_dir: Path) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            return path if path.is_absolute() else base_dir / path
    else:
        raise ConfigError(key, f"unsupported type {hint!r} in the config schema")
    raise ConfigError(key, f"expected {_type_name_of(hint)}, got {_type_name(value)} {value!r}")


def _check_spec(meta: Mapping[str, Any], value: Any, key: str) -> None:
    if not meta or value is None:
        return
    minimum, maximum = meta.get("minimum"), meta.get("maximum")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"must be >= {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"must be <= {maximum:g}, got {value!r}")
    pattern = meta.get("pattern")
    if pattern and not re.match(pattern, value):
        raise ConfigError(key, f"{value!r} does not match {pattern}")
    if meta.get("must_exist"):
        _check_file(value, key, secret=bool(meta.get("secret_file")))


def _check_file(path: Path, key: str, *, secret: bool) -> None:
    if not path.is_file():
        raise ConfigError(key, f"file {path} does not exist")
    mode = stat.S_IMODE(path.stat().st_mode)
    if secret and mode & 0o077:
        raise ConfigError(key, f"secret file {path} is readable by others (mode {mode:o}; use 600)")


def _check_cross_fields(config: GatewayConfig) -> None:
    uplink = config.uplink
    if uplink.reconnect_min_s > uplink.reconnect_max_s:
        raise ConfigError("uplink.reconnect_min_s", "must not exceed uplink.reconnect_max_s")
    if bool(uplink.cert_file) != bool(uplink.key_file):
        raise ConfigError("uplink.cert_file", "cert_file and key_file go together")
    if (uplink.cert_file or uplink.ca_file) and not uplink.url.startswith("mqtts://"):
        raise ConfigError("uplink.url", "TLS files are set but the url is not mqtts://")
    if config.buffer.audit_reserve_bytes >= config.buffer.max_bytes:
        raise ConfigError("buffer.audit_reserve_bytes", "must be smaller than buffer.max_bytes")


def _type_name(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    return names.get(type(value), "table" if isinstance(value, dict) else type(value).__name__)


def _type_name_of(hint: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, "a path string" if hint is Path else str(hint))
