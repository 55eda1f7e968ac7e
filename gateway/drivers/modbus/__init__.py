"""Modbus RTU/TCP through pymodbus: the bus owner and its transports."""
