"""Model catalog, precisions, GPU specs and latency models (measured tables and estimates)."""
