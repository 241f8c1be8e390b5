"""Talking to an OpenAI-compatible server: one streaming request, how its errors classify and retry, what is on
the wire and whether it has gone silent, and the server's /metrics."""
