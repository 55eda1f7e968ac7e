"""The MQTT uplink: connection, reconnect supervisor, delivery, publisher and command dispatch."""
