"""The naive server bench/serve.py races `bertkit serve` against: FastAPI + sentence-transformers
(or a transformers pipeline for a classifier), one model call per request, as a hand-written
endpoint usually looks. FastAPI runs plain `def` endpoints on a pool of threads, so concurrent
requests run concurrent model calls, each on a single short text, fighting for the same cores.

    python bench/naive_server.py MODEL_DIR [--kind embedding|classification] [--port 0]

Routes mirror bertkit's: POST /embed {"inputs": [...]} -> [[float]], POST /predict
{"inputs": [[text], ...]} -> [[{label, score}]], GET /health. Prints its URL on one line once up.
"""

from __future__ import annotations

import argparse
import socket
import sys

import uvicorn
from fastapi import FastAPI


def build(model_dir: str, kind: str) -> FastAPI:
    app = FastAPI()
    if kind == "embedding":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_dir, device="cpu")

        @app.post("/embed")
        def embed(body: dict) -> list:
            texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
            return model.encode(texts, normalize_embeddings=body.get("normalize", True)).tolist()
    else:
        from transformers import pipeline

        classify = pipeline("text-classification", model=model_dir, device="cpu", top_k=None, truncation=True)

        @app.post("/predict")
        def predict(body: dict) -> list:
            texts = [x[0] for x in body["inputs"]]
            return [sorted(r, key=lambda p: -p["score"]) for r in classify(texts)]

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--kind", choices=["embedding", "classification"], default="embedding")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    app = build(a.model_dir, a.kind)
    sock = socket.socket()
    sock.bind(("127.0.0.1", a.port))
    print(f"naive server on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


if __name__ == "__main__":
    main()
