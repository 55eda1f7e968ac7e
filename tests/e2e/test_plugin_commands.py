"""`sealgw master`, `sim` and `demo` come from the `sealgw.commands` entry points, loaded lazily.

Real processes against the installed metadata; a fake distribution on PYTHONPATH plays a broken
plug-in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fixtures.procs import REPO

PLUGIN_MODULES = ("master_station.cli", "firmware_sim.sim_cli", "firmware_sim.demo.cli")
PROBE = """
import json, sys
from gateway.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("master_station", "firmware_sim"))
print(json.dumps({"code": code, "modules": mods, "plugins": "gateway.cli.plugins" in sys.modules}))
"""


def _sealgw(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env_path = f"{pythonpath}:{REPO}" if pythonpath else str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path},
        check=False,
    )


def _probe(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_lists_master_sim_and_demo() -> None:
    done = _sealgw("--help")
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("    ")}
    assert "the reference master station" in lines["master"]
    assert "bench simulator" in lines["sim"]
    assert "bench demo" in lines["demo"]
    assert {"run", "config", "audit"} <= set(lines)


def test_help_and_built_in_commands_import_no_command_module() -> None:
    top = _probe("--help")
    assert top["code"] == 0
    assert not set(PLUGIN_MODULES) & set(top["modules"])

    built_in = _probe("config", "check", "/nonexistent/gw.toml")
    assert built_in["code"] == 2  # the missing file is a config error
    assert built_in["modules"] == []
    assert built_in["plugins"] is False  # entry points are not even read


def test_a_plugin_command_imports_only_its_own_module() -> None:
    master = _probe("master", "--help")
    assert master["code"] == 0
    assert "master_station.cli" in master["modules"]
    assert "firmware_sim.sim_cli" not in master["modules"]

    sim = _probe("sim", "--help")
    assert sim["code"] == 0
    assert "firmware_sim.sim_cli" in sim["modules"]
    assert "master_station.cli" not in sim["modules"]


def test_master_station_runs_alone() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "master_station", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "listen" in done.stdout and "issue-ticket" in done.stdout


def test_unknown_command_is_a_usage_error() -> None:
    done = _sealgw("no-such-command")
    assert done.returncode == 2
    assert "unknown command 'no-such-command'" in done.stderr
    assert "master" in done.stderr and "Traceback" not in done.stderr


def _broken_distribution(root: Path) -> Path:
    info = root / "sealgw_broken_plugins-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sealgw-broken-plugins\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[sealgw.commands]\nmissing = sealgw_no_such_module:COMMAND\nnotacommand = json:dumps\n"
    )
    return root


def test_a_broken_plugin_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    path = _broken_distribution(tmp_path / "site")

    missing = _sealgw("missing", pythonpath=path)
    assert missing.returncode == 1
    assert "command 'missing' is not available" in missing.stderr
    assert "sealgw_no_such_module" in missing.stderr
    assert "Traceback" not in missing.stderr

    wrong = _sealgw("notacommand", pythonpath=path)
    assert wrong.returncode == 1
    assert "is not a command descriptor" in wrong.stderr
    assert "Traceback" not in wrong.stderr

    listed = _sealgw("--help", pythonpath=path)
    assert listed.returncode == 0, listed.stderr
    assert "missing" in listed.stdout and "(unavailable" in listed.stdout
    assert "the reference master station" in listed.stdout  # the good plug-ins still work

    still = _sealgw("master", "--help", pythonpath=path)
    assert still.returncode == 0, still.stderr
