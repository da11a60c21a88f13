"""Drive a trace against a deployment (open loop, streaming) and report what users got."""
