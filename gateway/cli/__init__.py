"""The `sealgw` command.

One module per command group; other packages add groups through the `sealgw.commands` entry points.
"""
