"""The signed-command verifier, its bounded replay cache, and config rendering, without a broker."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config.loader import load_config
from gateway.errors import AuthError, ConfigError
from gateway.protocol.clock import ManualClock
from gateway.remote.auth import CommandVerifier, ReplayCache
from gateway.remote.config_update import merge_patch, prepare_config, render_toml, write_atomically
from gateway.uplink.commands import Command, CommandDispatcher
from tests.fixtures.remote import GATEWAY, signed_command

KEY = Ed25519PrivateKey.generate()


def verifier(clock: ManualClock, replay: ReplayCache | None = None) -> CommandVerifier:
    return CommandVerifier(
        KEY.public_key(), GATEWAY, clock, replay if replay is not None else ReplayCache(), skew_s=60
    )


def command(name: str, document: bytes) -> Command:
    return Command.parse(name, document)


def code_of(check: CommandVerifier, cmd: Command) -> str:
    with pytest.raises(AuthError) as caught:
        check(cmd)
    return caught.value.code


def test_window_checks_use_the_injected_clock() -> None:
    clock = ManualClock()
    now = int(clock.now().timestamp())
    check = verifier(clock)
    future = signed_command(KEY, "time_check", issued_at=now + 120)
    long_lived = signed_command(KEY, "time_check", issued_at=now, lifetime_s=7200)
    stale = signed_command(KEY, "time_check", issued_at=now - 400, lifetime_s=300)
    in_skew = signed_command(KEY, "time_check", issued_at=now - 350, lifetime_s=300)

    assert code_of(check, command("time_check", future)) == "not_yet_valid"
    assert code_of(check, command("time_check", long_lived)) == "lifetime_too_long"
    assert code_of(check, command("time_check", stale)) == "expired"
    check(command("time_check", in_skew))  # expired 50 s ago, inside the 60 s skew


def test_a_rejected_command_does_not_burn_its_nonce() -> None:
    clock = ManualClock()
    now = int(clock.now().timestamp())
    early = signed_command(KEY, "time_check", issued_at=now + 600, nonce="n" * 16)
    check = verifier(clock)

    assert code_of(check, command("time_check", early)) == "not_yet_valid"
    clock.advance(600)
    check(command("time_check", early))
    assert code_of(check, command("time_check", early)) == "replayed"


def test_replay_cache_is_bounded_and_never_lets_a_replay_through(tmp_path: Path) -> None:
    clock = ManualClock()
    now = int(clock.now().timestamp())
    replay = ReplayCache(tmp_path / "nonces.json", max_entries=8)
    check = verifier(clock, replay)
    documents = [
        signed_command(KEY, "time_check", issued_at=now, lifetime_s=100 + i) for i in range(20)
    ]
    for document in documents:
        check(command("time_check", document))

    assert len(replay) == 8
    assert {code_of(check, command("time_check", d)) for d in documents} == {"replayed"}
    reloaded = verifier(clock, ReplayCache(tmp_path / "nonces.json", max_entries=8))
    assert {code_of(reloaded, command("time_check", d)) for d in documents} == {"replayed"}
    clock.advance(400)  # every command has expired: the cache forgets them
    check(command("time_check", signed_command(KEY, "time_check", issued_at=now + 400)))
    assert len(replay) == 1


async def test_dispatcher_runs_signed_handlers_only_after_the_verifier() -> None:
    clock = ManualClock()
    dispatcher = CommandDispatcher(verifier(clock))
    calls: list[str] = []

    async def handler(cmd: Command) -> dict[str, str]:
        calls.append(cmd.name)
        return {}

    dispatcher.register("rebirth", handler, signed=True)
    now = int(clock.now().timestamp())
    forged = signed_command(Ed25519PrivateKey.generate(), "rebirth", issued_at=now)
    good = signed_command(KEY, "rebirth", issued_at=now)

    assert (await dispatcher.dispatch(command("rebirth", b"{}")))["error"] == "unsigned"
    assert (await dispatcher.dispatch(command("rebirth", forged)))["error"] == "bad_signature"
    assert (await dispatcher.dispatch(command("rebirth", good)))["ok"] is True
    assert calls == ["rebirth"]


def test_render_toml_round_trips_the_example_config() -> None:
    example = Path(__file__).resolve().parents[3] / "config" / "gateway.example.toml"
    table = tomllib.loads(example.read_text())
    table["odd key"] = {'quote"d': 'a "b" \\ c\td\x01', "list": [1, 2.5, True, "x"]}

    assert tomllib.loads(render_toml(table)) == table


def test_merge_patch_merges_tables_replaces_values_and_deletes_nulls() -> None:
    base = {"a": {"x": 1, "y": 2}, "b": [1, 2], "c": "keep"}
    merged = merge_patch(base, {"a": {"y": None, "z": 3}, "b": [3]})
    assert merged == {"a": {"x": 1, "z": 3}, "b": [3], "c": "keep"}
    assert base["a"] == {"x": 1, "y": 2}


def test_prepare_refuses_gateway_id_and_write_keeps_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(f'[gateway]\nid = "gw-1"\nstate_dir = "{tmp_path}"\n')
    running = load_config(path)

    with pytest.raises(ConfigError) as caught:
        prepare_config(running, patch={"gateway": {"id": "gw-2"}})
    assert caught.value.key == "gateway.id"
    prepared = prepare_config(running, patch={"synthetic": {"rate_per_s": 5}})
    backup = write_atomically(path, prepared.text)

    assert prepared.changed == ("synthetic.rate_per_s",)
    assert load_config(path).synthetic.rate_per_s == 5
    assert load_config(backup).synthetic.rate_per_s == running.synthetic.rate_per_s
