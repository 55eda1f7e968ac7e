"""The master station's ledger: models, SQL, and the SQLite and PostgreSQL backends."""
