"""systemd/sealgw.service: `systemd-analyze verify` for real, plus the hardening it must keep.

systemd-analyze verify works without systemd as PID 1, but it checks that ExecStart's binary
exists, and it only warns (exit 0) about unknown keys and unparsable values. So the unit is
verified as a copy whose ExecStart points at a stub executable, and any diagnostic that names
the unit counts as a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from gateway.daemon.sdnotify import SystemdNotifier

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "sealgw.service"
DROP_IN = SYSTEMD / "sealgw.service.d" / "hci-user-channel.conf"
SYSUSERS = SYSTEMD / "sysusers.d" / "sealgw.conf"
TMPFILES = SYSTEMD / "tmpfiles.d" / "sealgw.conf"
INSTALLED_BINARY = "/opt/sealgw/venv/bin/sealgw"
MAX_EXPOSURE = 25  # `systemd-analyze security` score x10; the unit scores 2.0

Directives = dict[str, list[str]]


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin")
    if path is None:
        pytest.fail(f"{name} is required for this test (apt install systemd)")
    return path


def parse_unit(text: str) -> dict[str, Directives]:
    """Section -> key -> every value in order (systemd allows repeated keys)."""
    sections: dict[str, Directives] = {}
    current: Directives = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def stage(tmp_path: Path, text: str, *, drop_in: bool = False) -> Path:
    """A copy of the unit whose ExecStart binary exists, optionally with the drop-in beside it."""
    stub = tmp_path / "bin" / "sealgw"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    assert text.count(f"ExecStart={INSTALLED_BINARY} ") == 1
    unit = tmp_path / "units" / "sealgw.service"
    unit.parent.mkdir(exist_ok=True)
    unit.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={stub} "))
    if drop_in:
        (unit.parent / "sealgw.service.d").mkdir(exist_ok=True)
        shutil.copy(DROP_IN, unit.parent / "sealgw.service.d" / DROP_IN.name)
    return unit


def verify(unit: Path) -> tuple[int, list[str]]:
    """Exit code and every diagnostic line about this unit."""
    proc = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [ln for ln in lines if str(unit.parent) in ln or "sealgw" in ln]


@pytest.fixture(scope="module")
def unit() -> dict[str, Directives]:
    return parse_unit(UNIT.read_text())


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    code, complaints = verify(stage(tmp_path, UNIT.read_text()))
    assert complaints == []
    assert code == 0


def test_verify_is_clean_with_the_hci_drop_in(tmp_path: Path) -> None:
    code, complaints = verify(stage(tmp_path, UNIT.read_text(), drop_in=True))
    assert complaints == []
    assert code == 0


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("WatchdogSec=30s", "WatchdogSec=thirty"), "Failed to parse sec value"),
        (("NoNewPrivileges=yes", "NoNewPrivilege=yes"), "Unknown key"),
        (("AF_BLUETOOTH", "AF_BLUETOOF"), "address family"),
    ],
)
def test_verify_check_catches_a_broken_unit(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    """The check above is not vacuous: each mistake is reported."""
    text = UNIT.read_text()
    assert edit[0] in text
    _code, complaints = verify(stage(tmp_path, text.replace(edit[0], edit[1], 1)))
    assert any(expected in line for line in complaints), complaints


def test_verify_fails_when_exec_start_binary_is_missing(tmp_path: Path) -> None:
    unit = tmp_path / "sealgw.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(tmp_path / "nothing")))
    code, complaints = verify(unit)
    assert code != 0
    assert any("is not executable" in line for line in complaints)


def test_offline_security_exposure_stays_low(tmp_path: Path) -> None:
    staged = stage(tmp_path, UNIT.read_text())
    argv = [tool("systemd-analyze"), "security", "--offline=true", "--no-pager"]
    proc = subprocess.run(
        [*argv, f"--threshold={MAX_EXPOSURE}", str(staged)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "Overall exposure level for sealgw.service" in proc.stdout


def test_service_lifecycle(unit: dict[str, Directives]) -> None:
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["ExecStart"] == [f"{INSTALLED_BINARY} run -c /etc/sealgw/gateway.toml"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2 3"]  # EXIT_USAGE, IDENTITY_CORRUPT
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]


def test_starts_after_the_clock_is_synchronised(unit: dict[str, Directives]) -> None:
    """Issue 13 item 6: never stamp events or sync meters from an unsynchronised clock."""
    after = " ".join(unit["Unit"]["After"]).split()
    wants = " ".join(unit["Unit"]["Wants"]).split()
    assert "time-sync.target" in after
    assert "time-sync.target" in wants  # a passive target: only pulled in when wanted


def test_watchdog_is_pinged_well_within_its_timeout(unit: dict[str, Directives]) -> None:
    [value] = unit["Service"]["WatchdogSec"]
    match = re.fullmatch(r"(\d+)s", value)
    assert match is not None
    watchdog_s = int(match.group(1))
    assert 10 <= watchdog_s <= 120
    env = {"WATCHDOG_USEC": str(watchdog_s * 1_000_000)}
    interval = SystemdNotifier(env).watchdog_interval_s
    assert interval is not None
    assert interval <= watchdog_s / 2


def test_dedicated_user_and_directories(unit: dict[str, Directives]) -> None:
    service = unit["Service"]
    assert service["User"] == ["sealgw"]
    assert service["Group"] == ["sealgw"]
    assert set(service["SupplementaryGroups"][0].split()) == {"bluetooth", "dialout"}
    assert service["StateDirectory"] == ["sealgw"]
    assert service["StateDirectoryMode"] == ["0700"]
    assert service["ConfigurationDirectory"] == ["sealgw"]
    assert service["LogsDirectory"] == ["sealgw"]
    assert service["UMask"] == ["0077"]


def test_hardening_directives(unit: dict[str, Directives]) -> None:
    service = unit["Service"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
    }.items():
        assert service.get(key) == [value], key
    assert service["CapabilityBoundingSet"] == [""]
    assert service["AmbientCapabilities"] == [""]
    families = service["RestrictAddressFamilies"]
    assert len(families) == 1
    assert sorted(families[0].split()) == ["AF_BLUETOOTH", "AF_INET", "AF_INET6", "AF_UNIX"]
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert "ProtectClock" not in service  # closes the serial ports on systemd 252; see the unit
    assert "PrivateDevices" not in service


def test_hci_drop_in_grants_only_cap_net_admin() -> None:
    service = parse_unit(DROP_IN.read_text())["Service"]
    assert service["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert service["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert set(service) == {"CapabilityBoundingSet", "AmbientCapabilities"}


def test_sysusers_creates_the_user_in_bluetooth_and_dialout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\ndialout:x:20:\n")
    proc = subprocess.run(
        [tool("systemd-sysusers"), f"--root={root}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    users = {line.split(":")[0]: line.split(":") for line in passwd_lines(root)}
    assert users["sealgw"][5:] == ["/var/lib/sealgw", "/usr/sbin/nologin"]
    groups = {fields[0]: fields[3].split(",") for fields in group_lines(root)}
    assert "sealgw" in groups["bluetooth"]
    assert "sealgw" in groups["dialout"]
    assert "sealgw" in groups


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles --root chowns, which needs root")
def test_tmpfiles_create_the_directories_like_the_unit_does(
    tmp_path: Path, unit: dict[str, Directives]
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nsealgw:x:4711:4711::/var/lib/sealgw:/usr/sbin/nologin\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nsealgw:x:4711:\n")
    proc = subprocess.run(
        [tool("systemd-tmpfiles"), f"--root={root}", "--create", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    service = unit["Service"]
    for rel, mode_key in (
        ("var/lib/sealgw", "StateDirectoryMode"),
        ("var/log/sealgw", "LogsDirectoryMode"),
    ):
        info = (root / rel).stat()
        assert stat.S_IMODE(info.st_mode) == int(service[mode_key][0], 8), rel
        assert (info.st_uid, info.st_gid) == (4711, 4711), rel
    config_dir = (root / "etc" / "sealgw").stat()
    assert stat.S_IMODE(config_dir.st_mode) == int(service["ConfigurationDirectoryMode"][0], 8)
    assert config_dir.st_uid == 0


def passwd_lines(root: Path) -> list[str]:
    return (root / "etc" / "passwd").read_text().splitlines()


def group_lines(root: Path) -> list[list[str]]:
    return [line.split(":") for line in (root / "etc" / "group").read_text().splitlines()]
