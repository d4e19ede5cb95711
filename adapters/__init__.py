"""DSPy and LangChain adapters onto the radixlm engine."""
