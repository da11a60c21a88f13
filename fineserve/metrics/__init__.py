"""Per-request records and run summaries shared by replay (measured) and simulate (predicted)."""
