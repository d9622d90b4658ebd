"""hopsctl: the admin RPCs of a HOPS control plane as readable tables."""
