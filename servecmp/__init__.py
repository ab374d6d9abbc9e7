"""servecmp: tell whether a quantized LLM endpoint may replace its baseline."""

__version__ = "0.1.0"
