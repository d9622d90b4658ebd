"""The HOPS control plane: live fleet state from agent streams, routing decisions and leases."""
