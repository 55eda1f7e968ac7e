"""The master station\x27s web console (`sealgw master serve`): docs/master.md, "Console"."""
