"""Runtime: turn a plan into running engines (MPS daemons, vLLM workers) behind one gateway."""
