"""Meters.

The meter service, readers, read plans, profiles, status tracking and theft correlation.
"""
