"""A BLE peripheral on BlueZ over D-Bus (dbus-fast): a GATT application, an advert, an agent."""
