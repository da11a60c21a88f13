"""End-to-end benchmark on one GPU (issue 7): static split without MPS, MuxServe-like MPS
shares with static KV, and FineServe (ILP, MPS, KV Slab, local scheduler), measured on the
same traces and predicted by the simulator. See docs/benchmarks.md."""
