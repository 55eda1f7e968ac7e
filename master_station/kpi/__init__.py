"""KPIs from the ledger: tables, JSON and the HTML page."""
