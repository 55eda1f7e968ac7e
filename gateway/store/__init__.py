"""The durable event buffer: SQLite, its schema and migrations, and the capacity policy."""
