"""`ascend-serve`: an OpenAI-compatible HTTP server over one loaded model, with continuous batching.

engine.py owns the model (one thread, requests joining and leaving the running batch between steps), protocol.py
the request and response bodies of the OpenAI API, app.py the HTTP routes, metrics.py the Prometheus metrics and
cli.py the command line. The HTTP stack (FastAPI, uvicorn, prometheus_client) is the `serve` extra:
`pip install 'ascend-super[serve]'`.
"""
