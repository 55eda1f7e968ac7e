"""Simulated meters: DL/T 645, Modbus and the district fleet, laid out from the vendors' maps."""
