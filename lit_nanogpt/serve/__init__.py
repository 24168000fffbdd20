"""``lit-nanogpt serve``: OpenAI's HTTP API over a checkpoint or an export, batching concurrent requests.

``command`` (the CLI) loads the backend and runs uvicorn over ``app`` (routes, SSE, errors, the API key,
the access log), which drives ``engine`` (continuous batching on worker threads over
``lit_nanogpt.decoding.Decoder``); ``protocol`` holds OpenAI's request schemas and error shape, ``chat``
the play-script layout of chat messages, ``metrics`` the Prometheus counters. Only ``command`` is
imported by the command table, and it imports FastAPI and uvicorn only once the arguments are checked.
"""
