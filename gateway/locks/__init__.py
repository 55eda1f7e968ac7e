"""Seal locks.

The lock service, the one operations path, scheduler, sessions, reconciliation and state.
"""
