"""`ble.adapter` selection: which bleak backend each string wires, and errors naming the key.

No BlueZ or D-Bus runs here, so the BlueZ path is proven by introspecting the bleak objects we
build (their backend class and the adapter it was given), without starting them.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bleak.backends import BleakBackend

from gateway.drivers.ble.adapters import (
    ADAPTER_KEY,
    AdapterSpec,
    BleAdapters,
    BlueZTransport,
    open_ble_transport,
    parse_adapter,
)
from gateway.drivers.ble.bumble.backend import BumbleTransport
from gateway.errors import ConfigError

linux_only = pytest.mark.skipif(platform.system() != "Linux", reason="bleak picks BlueZ on Linux")


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("bluez:hci0", AdapterSpec("bluez", "hci0")),
        ("  bluez:hci1 ", AdapterSpec("bluez", "hci1")),
        ("bluez", AdapterSpec("bluez", None)),
        ("bumble:tcp-client:127.0.0.1:9000", AdapterSpec("bumble", "tcp-client:127.0.0.1:9000")),
        ("bumble:usb:0", AdapterSpec("bumble", "usb:0")),
        ("bumble:usb:[driver=rtk]0", AdapterSpec("bumble", "usb:[driver=rtk]0")),
        (
            "bumble:serial:/dev/ttyACM0,1000000",
            AdapterSpec("bumble", "serial:/dev/ttyACM0,1000000"),
        ),
        ("bumble:vhci", AdapterSpec("bumble", "vhci")),
    ],
)
def test_parse_valid_adapter_strings(text: str, spec: AdapterSpec) -> None:
    assert parse_adapter(text) == spec
    assert parse_adapter(str(spec)) == spec  # the canonical form parses back to itself


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "must be a string"),
        (None, "must be a string"),
        (7, "must be a string"),
        ("hci0", "unknown adapter kind 'hci0'"),
        ("zigbee:/dev/ttyUSB0", "unknown adapter kind 'zigbee'"),
        ("bluez:", "named like 'hci0'"),
        ("bluez:eth0", "named like 'hci0'"),
        ("bluez:hci0:extra", "named like 'hci0'"),
        ("bumble:", "unknown bumble transport ''"),
        ("bumble:carrier-pigeon:1", "unknown bumble transport 'carrier-pigeon'"),
        ("bumble:usb", "needs parameters"),
        ("bumble:tcp-client:127.0.0.1", "HOST:PORT"),
        ("bumble:tcp-client::9000", "HOST:PORT"),
        ("bumble:tcp-client:localhost:99999", "HOST:PORT"),
        ("bumble:tcp-client:localhost:http", "HOST:PORT"),
    ],
)
def test_bad_adapter_strings_raise_config_error_naming_the_key(text: object, hint: str) -> None:
    with pytest.raises(ConfigError, match=hint) as info:
        parse_adapter(text)
    assert info.value.key == ADAPTER_KEY == "ble.adapter"
    assert str(info.value).startswith("ble.adapter: ")
    with pytest.raises(ConfigError):
        BleAdapters().get(text)  # type: ignore[arg-type]


@linux_only
def test_bluez_string_wires_bleaks_bluez_backend_on_that_adapter() -> None:
    transport = open_ble_transport("bluez:hci0")
    assert isinstance(transport, BlueZTransport)
    assert transport.adapter == "bluez:hci0"

    scanner = transport.make_scanner()
    client = transport.make_client("AA:BB:CC:DD:EE:FF", timeout=3.0)

    # Introspection, the only way without a running BlueZ: which backend, and which adapter.
    scanner_backend: Any = scanner._backend
    client_backend: Any = client._backend
    assert scanner.backend_id == BleakBackend.BLUEZ_DBUS
    assert type(scanner_backend).__name__ == "BleakScannerBlueZDBus"
    assert scanner_backend._adapter == "hci0"
    assert client.backend_id == BleakBackend.BLUEZ_DBUS
    assert type(client_backend).__name__ == "BleakClientBlueZDBus"
    assert client_backend._adapter == "hci0"
    assert client_backend._timeout == 3.0
    assert client.address == "AA:BB:CC:DD:EE:FF"


@linux_only
def test_bare_bluez_uses_the_system_default_adapter() -> None:
    transport = open_ble_transport("bluez")
    assert transport.adapter == "bluez"
    scanner_backend: Any = transport.make_scanner()._backend
    client_backend: Any = transport.make_client("AA:BB:CC:DD:EE:FF")._backend
    assert scanner_backend._adapter is None
    assert client_backend._adapter is None


async def test_bumble_string_wires_our_backend_lazily() -> None:
    transport = open_ble_transport("bumble:tcp-client:127.0.0.1:9")
    assert isinstance(transport, BumbleTransport)
    assert transport.adapter == "bumble:tcp-client:127.0.0.1:9"
    assert transport.bumble_adapter.name == "tcp-client:127.0.0.1:9"

    scanner = transport.make_scanner()
    client = transport.make_client("F1:00:00:00:00:01")

    assert scanner.backend_id == "BleakScannerBumble"
    assert client.backend_id == "BleakClientBumble"
    assert not client.is_connected
    assert not transport.bumble_adapter.is_open  # nothing dialled port 9 yet
    await transport.close()


async def test_registry_shares_one_transport_per_adapter_and_closes_them() -> None:
    adapters = BleAdapters()
    first = adapters.get("bumble:tcp-client:127.0.0.1:9")
    assert adapters.get(" bumble:tcp-client:127.0.0.1:9 ") is first
    other = adapters.get("bumble:tcp-client:127.0.0.1:10")
    assert other is not first
    assert adapters.get("bluez:hci0") is adapters.get("bluez:hci0")

    await adapters.close()

    assert adapters.get("bumble:tcp-client:127.0.0.1:9") is not first  # closed ones are dropped
    await adapters.close()


def test_selecting_bluez_does_not_import_bumble() -> None:
    code = (
        "import sys; from gateway.drivers.ble.adapters import open_ble_transport; "
        "open_ble_transport('bluez:hci0'); print('bumble' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert out.stdout.strip() == "False"
