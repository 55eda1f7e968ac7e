"""Pure parts of the handheld GATT servers: the advertised name and BlueZ's write options."""

from __future__ import annotations

import pytest
from dbus_fast import DBusError, Variant

from gateway.drivers.ble.bluez.gatt_objects import WriteOptions, parse_write_options
from gateway.handheld.gatt_link import ADVERTISED_NAME_ROOM, advertised_name


def test_the_name_is_cut_to_what_a_legacy_advert_holds() -> None:
    assert ADVERTISED_NAME_ROOM == 8  # 31 - flags (3) - 128-bit UUID list (18) - name header (2)
    assert advertised_name("sealgw-gw-1") == "sealgw-g"
    assert advertised_name("gw") == "gw"


def test_a_cut_name_never_ends_inside_a_character() -> None:
    name = advertised_name("网关-台区-0001")  # 3 + 3 + 1 bytes; the next character needs 3
    assert name == "网关-"
    assert len(name.encode("utf-8")) <= ADVERTISED_NAME_ROOM


def test_write_options_name_the_link_and_its_mtu() -> None:
    options = {
        "device": Variant("o", "/org/bluez/hci0/dev_F4_A0_00_00_00_02"),
        "mtu": Variant("q", 247),
        "link": Variant("s", "LE"),
        "type": Variant("s", "request"),
    }
    assert parse_write_options(options) == WriteOptions(
        "/org/bluez/hci0/dev_F4_A0_00_00_00_02", mtu=247, offset=0, kind="request"
    )


def test_an_mtu_missing_or_below_the_le_minimum_is_23() -> None:
    device = {"device": Variant("o", "/org/bluez/hci0/dev_X")}
    assert parse_write_options(device).mtu == 23
    assert parse_write_options({**device, "mtu": Variant("q", 5)}).mtu == 23


@pytest.mark.parametrize("options", [{}, {"device": Variant("s", "")}, {"mtu": Variant("q", 247)}])
def test_a_write_that_names_no_device_is_refused(options: dict[str, Variant]) -> None:
    with pytest.raises(DBusError) as refused:
        parse_write_options(options)
    assert refused.value.type == "org.bluez.Error.Failed"
