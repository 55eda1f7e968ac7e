"""The configuration loader and spec; each domain owns its own section's dataclass."""
