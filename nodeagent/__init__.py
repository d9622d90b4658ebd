"""The HOPS node agent: runs beside Ollama on each host and keeps the control planes informed."""

VERSION = "0.1.0"
