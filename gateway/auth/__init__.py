"""Authorization.

The role policy, the ticket store, the gateway's identity keys and the `cmd/ticket|revoke|cert`
handlers.
"""
