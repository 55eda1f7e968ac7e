"""Signed remote management from the master station (config, log level, time, rebirth, restart)."""
