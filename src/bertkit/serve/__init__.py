"""`bertkit serve`: any bertkit model behind an HTTP API that existing clients already speak
(OpenAI embeddings, Hugging Face text-embeddings-inference), with dynamic batching.

    batcher.py  the queue: inputs of concurrent requests -> token-budget batches -> the model on one thread
    metrics.py  Prometheus counters and histograms (GET /metrics)
    schemas.py  request and response bodies (OpenAI's and text-embeddings-inference's field names)
    app.py      the FastAPI app: routes, limits, errors
    server.py   load a model, serve it under uvicorn (or on a thread: tests, the demo)
    static/     the playground page served at /

Needs the serve extra: pip install 'bertkit[serve]'.
"""

from bertkit.serve.app import ServeConfig, create_app
from bertkit.serve.server import Running, describe, load_model, serve, serve_and_query, start

__all__ = ["Running", "ServeConfig", "create_app", "describe", "load_model", "serve", "serve_and_query", "start"]
