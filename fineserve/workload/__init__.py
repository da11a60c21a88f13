"""Synthetic and replayed request traces: arrivals, popularity, request lengths."""
