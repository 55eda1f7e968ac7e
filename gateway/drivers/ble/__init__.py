"""BLE transports behind the bleak API, chosen by an adapter string (`bluez:hci0`, `bumble:...`)."""
