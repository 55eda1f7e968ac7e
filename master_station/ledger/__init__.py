"""The master station's ledger: every event received exactly once, chain checks, retained state.

Layers, each importing only those below it: `factory` (`open_ledger`) > `sql` (`SqlLedger`, the
one SQL implementation) > `sqlite`, `postgres` (connections and transactions), `schema` (tables
and statements) > `models` (results, rows, the `Ledger` protocol, `parse_event`). SQLite is a
file and the default; PostgreSQL, chosen by a `postgresql://` DSN, is shared by several master
processes. The `events` table is what `sealgw audit verify` reads. Design: docs/master.md.
"""
