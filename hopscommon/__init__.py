"""Small pieces every HOPS binary shares: Ollama model names, units, and flag-plus-env settings.

Kept apart from the four binaries so none of them imports another (the edge must not depend on
the simulator just to normalise a model name).
"""
