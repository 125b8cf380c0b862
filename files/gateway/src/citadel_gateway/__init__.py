"""citadel-gateway: OpenAI-compatible gateway in front of one vLLM server per model."""

__version__ = "0.1.0"
