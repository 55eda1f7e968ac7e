"""Remote management over signed MQTT commands: config, log level, time check, rebirth, restart.

Every handler here is registered with `signed=True`, so it runs only after the
`CommandVerifier` (gateway.remote.auth) accepted the command document; arguments are read from
the signed body's `args`, never from unsigned parts of the message. Each command gets exactly
one reply (gateway.uplink.commands). Commands (args, then result):

- `config` {"toml": TEXT} or {"patch": {...}}, optional "restart": bool -> {"applied",
  "changed", "live", "requires_restart", "restart_keys", "restarting", "backup"}. Validated with
  the real loader first; buffer keys are refused (gateway.remote.config_update); the buffer file is
  never touched.
- `log_level` {"level": "DEBUG"|"INFO"|"WARNING"|"ERROR", "logger"?: name} -> {"level",
  "previous"}. Not persisted: use `config` with a patch of log.level for that.
- `time_check` {} -> {"gateway_utc", "issued_at", "offset_s", "within_skew"}; offset_s is
  gateway time minus the command's issued_at (whole seconds, so +/- 1 s of resolution plus
  the transit time).
- `rebirth` {} -> {"republished": N}: the online status and every retained value again.
- `restart` {} -> {"restarting": true, "exit_code": 75}: the reply goes out first, then the
  daemon shuts down cleanly and exits with 75 (EX_TEMPFAIL), a failure to systemd, so
  `Restart=on-failure` starts it again (2, a config error, is the only status it will not
  restart on).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.config.model import GatewayConfig
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.protocol.events import Emit, EventDraft, EventType, Priority, format_ts
from gateway.remote.auth import REPLAY_FILE, CommandVerifier, ReplayCache
from gateway.remote.config_update import PreparedConfig, prepare_config, write_atomically
from gateway.uplink.commands import Command, CommandDispatcher, command_args, signed_body

__all__ = [
    "EXIT_RESTART",
    "RESTART_DELAY_S",
    "RemoteManagement",
    "install_remote_management",
]

_log = logging.getLogger(__name__)

EXIT_RESTART = 75  # EX_TEMPFAIL: non-zero, so systemd's Restart=on-failure restarts us
RESTART_DELAY_S = 0.2  # the reply is queued first; this leaves it time to leave
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_LOGGER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.")

Rebirth = Callable[[], int]
Restart = Callable[[int], None]


class RemoteManagement:
    """The signed management commands of one gateway."""

    def __init__(
        self,
        config: GatewayConfig,
        clock: Clock,
        *,
        rebirth: Rebirth | None = None,
        restart: Restart | None = None,
        emit: Emit | None = None,
        skew_s: int | None = None,
    ) -> None:
        self.running = config
        self.clock = clock
        self._rebirth = rebirth
        self._restart = restart
        self._emit = emit
        self._skew_s = config.authorization.skew_s if skew_s is None else skew_s
        self._config_lock = asyncio.Lock()
        self._restart_handle: asyncio.TimerHandle | None = None

    def install(self, dispatcher: CommandDispatcher) -> None:
        """Register every command as a signed command."""
        dispatcher.register("config", self.config, signed=True)
        dispatcher.register("log_level", self.log_level, signed=True)
        dispatcher.register("time_check", self.time_check, signed=True)
        dispatcher.register("rebirth", self.rebirth, signed=True)
        dispatcher.register("restart", self.restart, signed=True)

    async def config(self, command: Command) -> Mapping[str, JSONValue]:
        """Validate, then atomically write a new config; apply what can apply live."""
        args = command_args(command)
        text, patch = _optional(args, "toml", str), _optional(args, "patch", dict)
        wants_restart = _optional(args, "restart", bool) or False
        async with self._config_lock:
            prepared = await asyncio.to_thread(prepare_config, self.running, text=text, patch=patch)
            if not prepared.changed:
                return _config_result(prepared, applied=False, backup=None, restarting=False)
            backup = await asyncio.to_thread(_write, prepared)
            live = self._apply_live(prepared)
        restarting = wants_restart and bool(prepared.restart_keys)
        self._audit("config", command, {"changed": list(prepared.changed), "live": live})
        _log.warning("remote config applied: %s", ", ".join(prepared.changed))
        if restarting:
            self._schedule_restart()
        return _config_result(prepared, applied=True, backup=str(backup), restarting=restarting)

    async def log_level(self, command: Command) -> Mapping[str, JSONValue]:
        """Set the level of the root logger (or of `logger`) until the next restart."""
        args = command_args(command)
        level = args.get("level")
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}")
        name = _optional(args, "logger", str) or ""
        if not set(name) <= _LOGGER_NAME_CHARS:
            raise ValueError("logger must be a dotted lowercase logger name")
        target = logging.getLogger(name or None)
        previous = logging.getLevelName(target.getEffectiveLevel())
        target.setLevel(level)
        self._audit("log_level", command, {"level": level, "logger": name or "root"})
        return {"level": level, "previous": previous, "logger": name or "root"}

    async def time_check(self, command: Command) -> Mapping[str, JSONValue]:
        """The gateway's UTC time and its offset from the command's issued_at."""
        body = signed_body(command)
        now = self.clock.now()
        offset = now.timestamp() - body.issued_at
        return {
            "gateway_utc": format_ts(now),
            "issued_at": body.issued_at,
            "offset_s": round(offset, 3),
            "within_skew": abs(offset) <= self._skew_s,
            "skew_s": self._skew_s,
        }

    async def rebirth(self, command: Command) -> Mapping[str, JSONValue]:
        """Republish the online status and the retained states."""
        del command
        if self._rebirth is None:
            raise ValueError("rebirth is not available in this gateway")
        return {"republished": self._rebirth()}

    async def restart(self, command: Command) -> Mapping[str, JSONValue]:
        """Reply, then shut down cleanly and exit non-zero so systemd starts us again."""
        if self._restart is None:
            raise ValueError("restart is not available in this gateway")
        self._audit("restart", command, {"exit_code": EXIT_RESTART})
        self._schedule_restart()
        return {"restarting": True, "exit_code": EXIT_RESTART, "delay_s": RESTART_DELAY_S}

    # -- helpers -----------------------------------------------------------------------------

    def _apply_live(self, prepared: PreparedConfig) -> list[JSONValue]:
        live: list[JSONValue] = []
        if "log.level" in prepared.changed:
            logging.getLogger().setLevel(prepared.config.log.level)
            self.running = _with_log(self.running, prepared.config)
            live.append("log.level")
        return live

    def _schedule_restart(self) -> None:
        if self._restart is None or self._restart_handle is not None:
            return
        _log.warning("restart requested by the master station; exiting with %d", EXIT_RESTART)
        loop = asyncio.get_running_loop()
        self._restart_handle = loop.call_later(RESTART_DELAY_S, self._restart, EXIT_RESTART)

    def _audit(self, what: str, command: Command, data: Mapping[str, JSONValue]) -> None:
        if self._emit is None:
            return
        body = signed_body(command)
        payload: dict[str, JSONValue] = {"command": what, "nonce": body.nonce, **data}
        draft = EventDraft(
            EventType.GATEWAY_COMMAND,
            self.running.gateway.id,
            payload,
            Priority.AUDIT,
            self.clock.now(),
        )
        self._emit(draft)


def install_remote_management(
    dispatcher: CommandDispatcher,
    config: GatewayConfig,
    clock: Clock,
    *,
    master_key: Ed25519PublicKey,
    rebirth: Rebirth | None = None,
    restart: Restart | None = None,
    emit: Emit | None = None,
) -> RemoteManagement:
    """Install the signed-command verifier and register the management commands."""
    replay = ReplayCache(config.gateway.state_dir / REPLAY_FILE)
    dispatcher.verifier = CommandVerifier(
        master_key, config.gateway.id, clock, replay, skew_s=config.authorization.skew_s
    )
    remote = RemoteManagement(config, clock, rebirth=rebirth, restart=restart, emit=emit)
    remote.install(dispatcher)
    return remote


def _write(prepared: PreparedConfig) -> str:
    assert prepared.config.source is not None  # prepare_config checked it
    return str(write_atomically(prepared.config.source, prepared.text))


def _config_result(
    prepared: PreparedConfig, *, applied: bool, backup: str | None, restarting: bool
) -> dict[str, JSONValue]:
    restart_keys: list[JSONValue] = list(prepared.restart_keys)
    return {
        "applied": applied,
        "changed": list(prepared.changed),
        "live": [key for key in prepared.changed if key not in restart_keys],
        "requires_restart": bool(restart_keys),
        "restart_keys": restart_keys,
        "restarting": restarting,
        "backup": backup,
    }


def _with_log(running: GatewayConfig, new: GatewayConfig) -> GatewayConfig:
    return replace(running, log=new.log)


def _optional(args: Mapping[str, Any], key: str, kind: type[Any]) -> Any:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{key} must be a {kind.__name__}")
    return value
