"""sealgw: edge gateway for electronic meter seals and electricity meters."""

__version__ = "0.1.0"
