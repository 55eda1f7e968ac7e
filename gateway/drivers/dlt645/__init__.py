"""DL/T 645-2007 over a serial line or TCP: the bus owner and its lines."""
