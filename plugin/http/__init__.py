"""HTTP for radixlm: the front (`radixlm serve --http-port`: OpenAI-compatible `/v1/...` and SGLang-native
`/generate` and friends, a separate ASGI process that reaches the engine through the ZeroMQ client) and
the httpx client (`radixlm.connect("http://host:port")`: the same client API against radixlm, SGLang,
vLLM or any OpenAI-compatible server). Importing it never imports torch."""
