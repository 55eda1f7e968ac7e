"""Handhelds: the pairing and session server, paired devices, and the operations API it calls."""
