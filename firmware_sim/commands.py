"""The `sealgw sim` and `sealgw demo` plug-in descriptors (entry points `sealgw.commands`).

Cheap to import on purpose: `sealgw --help` reads their `help` without importing the simulator;
`register` imports the command's module only when that command runs.
"""

from __future__ import annotations

import argparse
from typing import Final, TypeAlias

__all__ = ["DEMO", "SIM"]

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class _SimCommand:
    help: Final = "run the bench simulator (locks, meters)"

    def register(self, commands: SubParsers) -> None:
        """Add `sim`."""
        from firmware_sim.sim_cli import register_sim_command  # noqa: PLC0415 - a plug-in loads its command module only when that command runs

        register_sim_command(commands)


class _DemoCommand:
    help: Final = "run the bench demo on this machine"

    def register(self, commands: SubParsers) -> None:
        """Add `demo`."""
        from firmware_sim.demo.cli import register_demo_command  # noqa: PLC0415 - a plug-in loads its command module only when that command runs

        register_demo_command(commands)


SIM = _SimCommand()
DEMO = _DemoCommand()
