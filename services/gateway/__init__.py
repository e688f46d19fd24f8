"""The HTTP gateway (Litestar): the OpenAI-compatible routes, their schemas, SSE, auth, deadlines, and the one
place that maps exceptions to error responses."""
