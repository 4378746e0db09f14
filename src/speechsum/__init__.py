"""speechsum: speech summarization with multimodal LLMs."""

__version__ = "0.1.0"
