"""Simulated seal locks: the firmware model, its GATT peripheral, and the world of many locks."""
