"""The `sealgw master` plug-in descriptor (entry point `sealgw.commands: master`).

Cheap to import on purpose: `sealgw --help` reads `COMMAND.help` without importing the master
station; `register` imports master_station.cli only when `sealgw master ...` runs.
"""

from __future__ import annotations

import argparse
from typing import Final

__all__ = ["COMMAND"]


class _MasterCommand:
    help: Final = "the reference master station"

    def register(self, commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        """Add `master` and its subcommands."""
        from master_station.cli import register_master_command  # noqa: PLC0415 - a plug-in loads its command module only when that command runs

        register_master_command(commands, help_line=self.help)


COMMAND = _MasterCommand()
