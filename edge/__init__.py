"""The HOPS edge: the Ollama and OpenAI HTTP API over the whole fleet."""
