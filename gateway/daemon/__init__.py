"""The daemon.

Assembly of the services, the supervisor, health events, the control socket and sd_notify.
"""
