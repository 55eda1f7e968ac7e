"""The simulated handheld: a client of the gateway's handheld protocol, and its CLI."""
