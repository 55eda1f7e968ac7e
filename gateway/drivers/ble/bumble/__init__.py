"""A bleak backend on bumble.

The bench's BLE stack, and a way to drive a USB dongle without BlueZ.
"""
