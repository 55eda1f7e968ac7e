"""The BlueZ test bed: a Debian VM under QEMU (TCG) with hci_vhci, dbus and bluetoothd.

`image()` builds the VM image once per set of inputs (this folder's scripts and the pinned guest
packages) into a cache outside the checkout, and reuses it after. `run_scenario()` copies the
checkout's packages (bytecode compiled here) and the guest scripts into a fresh 9p share, boots
the VM and returns what the guest left there: its exit code, the scenarios' JSON summary, its logs
(scenarios, simulator, gateway, bluetoothd; btmon's decoded when something failed) and the LE
links and ATT PDUs of btmon's HCI file (tests/bluez/trace.py). `python -m tests.bluez.harness
[SCENARIO]` runs one by hand (SEALGW_BLUEZ_KEEP=1 keeps the share of a passing run too).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.bluez.trace import Link, read_links

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("SEALGW_VM_CACHE", "/var/cache/sealgw/bluez-vm"))
GUEST_PACKAGES = (
    "bleak",
    "bumble",
    "dbus-fast",
    "paho-mqtt",
    "cryptography",
    "pymodbus",
    "pyserial",
)
"""Installed in the guest at the versions this venv has, so host and guest run the same stack."""
EXTRA_GUEST_PACKAGES = ("cbor2", "spake2")
"""Added at this venv's version when installed here (optional runtime dependencies)."""
VM_TIMEOUT_S = 900
BUILD_TIMEOUT_S = 1500


@dataclass
class GuestRun:
    """What one VM boot left in its share, and what the host read from its HCI trace."""

    rc: int
    seconds: float
    console: str
    summary: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    """Every LE link of hci0 with its ATT PDUs, from btmon's file (tests/bluez/trace.py)."""
    qemu_cpu_s: float = 0.0
    """Host CPU seconds QEMU used: the work of the run, whatever else loads the machine."""

    @property
    def scenarios(self) -> dict[str, dict[str, Any]]:
        """Scenario name -> {ok, s, detail | error, ...} as the guest reported them."""
        return dict(self.summary.get("scenarios", {}))

    def timing(self) -> str:
        """One line: guest result, wall time, QEMU's CPU time, each scenario's seconds."""
        each = ", ".join(f"{name} {r.get('s', '?')}" for name, r in self.scenarios.items())
        booted = re.search(r"VM: init at uptime ([0-9.]+)s", self.console)
        return (
            f"guest rc={self.rc} after {self.seconds:.0f} s (QEMU {self.qemu_cpu_s:.0f} CPU s, "
            f"booted in {booted.group(1) if booted else '?'} s); scenarios (s): {each or 'none'}"
        )

    def passed(self, name: str) -> dict[str, Any]:
        """The scenario's result; AssertionError with the whole report unless it passed."""
        result = self.scenarios.get(name)
        if result is None:
            raise AssertionError(f"scenario {name} did not run\n{self.report()}")
        if not result.get("ok"):
            raise AssertionError(f"{name}: {result.get('error')}\n{self.report()}")
        return result

    def report(self) -> str:
        """Everything a person needs when a scenario failed: console and the guest's logs."""
        parts = [self.timing(), "--- console", self.console]
        parts += ["--- summary.json", json.dumps(self.summary, indent=1)]
        for name, text in self.logs.items():
            parts += [f"--- {name} (tail)", "\n".join(text.splitlines()[-80:])]
        return "\n".join(parts)


def guest_packages() -> list[str]:
    """`name==version` of every guest package, as installed in this interpreter."""
    pins = []
    for name in GUEST_PACKAGES:
        pins.append(f"{name}=={metadata.version(name)}")
    for name in EXTRA_GUEST_PACKAGES:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def image_key(packages: list[str]) -> str:
    """A hash of everything that goes into the image."""
    digest = hashlib.sha256()
    for name in ("build-image.sh", "guest-init.sh"):
        digest.update((HERE / name).read_bytes())
    digest.update("\n".join(sorted(packages)).encode())
    return digest.hexdigest()[:16]


def image() -> Path:
    """The image folder for the current inputs; built (about 100 s) when it is not cached.

    The build holds an exclusive lock on `CACHE/KEY.lock`: a second test run that needs the
    same image meanwhile (another checkout, another pytest) waits for it instead of building
    it twice, then finds it cached.
    """
    packages = guest_packages()
    key = image_key(packages)
    folder = CACHE / key
    if (folder / "root.img").exists():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    with _exclusive(CACHE / f"{key}.lock", timeout_s=BUILD_TIMEOUT_S + 60):
        if (folder / "root.img").exists():  # built by whoever held the lock before us
            return folder
        build = subprocess.run(
            ["bash", str(HERE / "build-image.sh"), str(folder), " ".join(packages)],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
        )  # fmt: skip
    if build.returncode != 0 or not (folder / "root.img").exists():
        raise RuntimeError(
            f"VM image build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
        )
    return folder


@contextmanager
def _exclusive(path: Path, *, timeout_s: float) -> Iterator[None]:
    """An exclusive `flock` on `path`, waited for up to `timeout_s` (then a clear error)."""
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path} stayed locked for {timeout_s:.0f} s: another VM image build"
                    ) from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_scenario(scenario: str = "locks", *, duration_s: float = 60) -> GuestRun:
    """Boot the VM once and run `scenario` inside; never raises for a failing guest."""
    folder = image()
    share = Path(tempfile.mkdtemp(prefix="sealgw-bluez-"))
    _fill_share(share, scenario, duration_s)
    run = _boot(folder, share)
    if run.rc == 0 and not os.environ.get("SEALGW_BLUEZ_KEEP"):
        shutil.rmtree(share, ignore_errors=True)
    else:  # keep every log of a failed run
        run.console += f"\n(the guest's share, with every log, is kept in {share})"
    return run


def _fill_share(share: Path, scenario: str, duration_s: float) -> None:
    """The checkout's packages with their entry points, the guest scripts, the inputs."""
    site = share / "site"
    _install_checkout(site)
    # `sealgw sim` points meters at the checkout's config/profiles (beside the packages).
    shutil.copytree(REPO / "config", site / "config")
    # The ATT round-trip count of the bench (bench/att_tap.py), applied to the guest's trace.
    (site / "bench").mkdir()
    for name in ("__init__.py", "att_tap.py"):
        shutil.copy(REPO / "bench" / name, site / "bench" / name)
    _compile(site)
    shutil.copy(HERE / "guest.sh", share / "guest.sh")
    (share / "guest.sh").chmod(0o755)
    for script in sorted(HERE.glob("guest_*.py")):  # the driver and its scenario modules
        shutil.copy(script, share / script.name)
    (share / "scenario").write_text(scenario)
    (share / "duration").write_text(f"{duration_s:g}")


def _install_checkout(site: Path) -> None:
    """What `pip install .` would put in site-packages, without building a wheel.

    The packages pyproject.toml names, copied as they are in the checkout, and a dist-info
    with the entry points (`sealgw sim` and `sealgw demo` are plug-in commands found through
    them). Faster than a wheel build, and nothing is left in the checkout's build/ folder.
    """
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in sorted({p.rstrip("*") for p in patterns}):
        shutil.copytree(REPO / package, site / package, ignore=skip)
    meta = project["project"]
    info = site / f"{meta['name']}-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n"
    )
    groups = {"console_scripts": meta.get("scripts", {}), **meta.get("entry-points", {})}
    lines = []
    for group, entries in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))


def _compile(site: Path) -> None:
    """Bytecode compiled here, where it is fast.

    Under emulation every module the guest compiled itself would cost it seconds at each
    Python start, and it never keeps them (PYTHONDONTWRITEBYTECODE on the 9p share). Host and
    guest both run Python 3.11, so the guest loads these; another host Python's files carry
    another cache tag and the guest ignores them.
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0",
         "--invalidation-mode", "unchecked-hash", str(site)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


def _boot(folder: Path, share: Path) -> GuestRun:
    command = [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-m", "1536", "-smp", "2", "-nodefaults", "-no-user-config",
        "-kernel", str(folder / "vmlinuz"), "-initrd", str(folder / "initrd.img"),
        "-append", "root=/dev/vda rootfstype=ext4 rw console=ttyS0 init=/sbin/sealgw-init "
        "panic=-1 loglevel=3",
        "-drive", f"file={folder / 'root.img'},format=raw,if=virtio,snapshot=on",
        "-virtfs", f"local,path={share},mount_tag=share,security_model=none,id=share",
        "-display", "none", "-monitor", "none", "-serial", "stdio", "-nic", "none", "-no-reboot",
    ]  # fmt: skip
    started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        boot = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=VM_TIMEOUT_S, check=False,
        )  # fmt: skip
        console = boot.stdout + boot.stderr
    except subprocess.TimeoutExpired as exc:
        console = f"VM timed out after {VM_TIMEOUT_S} s\n{_text(exc.stdout)}{_text(exc.stderr)}"
    result = share / "result.rc"
    rc = int(result.read_text()) if result.exists() else 125
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = GuestRun(rc, time.monotonic() - started, console)
    run.qemu_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    summary = share / "summary.json"
    if summary.exists() and summary.stat().st_size:
        try:
            run.summary = json.loads(summary.read_text())
        except json.JSONDecodeError:
            run.logs["summary.json"] = summary.read_text()
    for path in sorted([*share.glob("*.log"), *share.glob("work/*.log")]):
        run.logs[path.name] = path.read_text(errors="replace")
    trace = share / "hci.btsnoop"
    if trace.exists():
        try:
            run.links = read_links(trace)
        except ValueError as exc:
            run.logs["hci.btsnoop"] = f"unreadable: {exc}"
    return run


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


if __name__ == "__main__":
    outcome = run_scenario(sys.argv[1] if len(sys.argv) > 1 else "locks")
    print(outcome.report() if outcome.rc else outcome.timing())
    sys.exit(outcome.rc)
