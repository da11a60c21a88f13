"""Test doubles with real network behaviour (a stub OpenAI server), for tests and benchmarks."""
