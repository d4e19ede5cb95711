"""radixlm: fast local engine for DSPy programs and LangChain agents.

Importing this package never imports torch: the client side stays light; the engine lives in
`radixlm.engine` and runs in its own process.
"""

__version__ = "0.1.0"
