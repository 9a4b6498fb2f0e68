"""Running the app: load a model, serve it under uvicorn until a signal, or start it on a thread
of this process (tests, the demo's last step).

Stopping: SIGTERM or Ctrl-C closes the listening socket, lets every request in flight finish
(the batcher keeps running until the last one is answered), then returns the signal; the CLI
exits 143 (SIGTERM) or 130 (SIGINT) as every bertkit command does.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import uvicorn

from bertkit.config import BertConfig
from bertkit.hub import resolve
from bertkit.infer import Embedder, sentence_transformers_options
from bertkit.serve.app import ServeConfig, Service, create_app

HEADS = ("BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering")


def load_model(model: str | Path, *, dtype: str | None = None, device: str = "cpu", max_length: int | None = None,
               backend: str = "torch"):
    """A model name or folder -> an Embedder (an encoder) or a Predictor (a fine-tuned task head).

    An encoder saved by sentence-transformers embeds as it says (pooling, max_seq_length) unless
    max_length is given. The model runs once on a tiny input before it is returned, so that a
    broken model fails here and the first request pays no first-call costs.
    """
    model_dir = resolve(model)
    arch = None
    if (model_dir / "config.json").is_file():
        arch = (BertConfig.from_json(model_dir / "config.json").extra.get("architectures") or [None])[0]
    if arch in HEADS:
        try:
            from bertkit.tasks.predictor import Predictor
        except ImportError:  # the tasks branch brings it
            raise ValueError(f"{model_dir}: a fine-tuned {arch}; serving task heads needs "
                             f"bertkit.tasks.predictor, which this install lacks") from None
        net = Predictor.from_pretrained(model_dir, dtype=dtype, device=device, max_length=max_length, backend=backend)
    else:
        options = sentence_transformers_options(model_dir)
        if max_length is not None:
            options["max_length"] = max_length
        net = Embedder.from_pretrained(model_dir, dtype=dtype, device=device, backend=backend, **options)
    net.run(net.prepare([("a question", "a context") if getattr(net, "kind", None) == "qa" else "a text"]))
    return net


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free one, read back with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio sets TCP_NODELAY only on sockets that say IPPROTO_TCP, and
    # without it every answer (headers, then body: two writes) waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)  # from now on connections wait in the backlog until uvicorn takes them
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn(app, log_level: str = "warning") -> uvicorn.Server:
    # No access log: one line per request costs more than the rest of the request's Python.
    # timeout_graceful_shutdown=None: on SIGTERM wait for every request in flight, however long.
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                                         timeout_graceful_shutdown=None))


def serve(model: str | Path, config: ServeConfig | None = None, *, log_level: str = "warning") -> int | None:
    """Load `model`, serve it on config.host:config.port until SIGTERM or SIGINT.

    Prints one line with the URL once it is listening (port 0: the free port taken) and returns
    the signal that stopped it.
    """
    config = config or ServeConfig()
    sock = listen(config.host, config.port)  # a port already taken fails before the model loads
    try:
        net = load_model(model, dtype=config.dtype, device=config.device, max_length=config.max_length,
                         backend=config.backend)
    except BaseException:
        sock.close()
        raise
    app = create_app(net, str(model), config)
    svc = app.state.service
    print(f"bertkit serve: {model} ({svc.kind}, {config.dtype}, max length {net.max_length}) on {_url(sock)}  "
          f"routes: {', '.join(svc.routes)}", file=sys.stderr, flush=True)
    stopped_by: list[int] = []
    # uvicorn catches SIGINT/SIGTERM while it serves, stops gracefully, then re-raises the signal
    # to the handlers it found: these, which only note it.
    previous = {sig: signal.signal(sig, lambda signum, frame: stopped_by.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _uvicorn(app, log_level).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return stopped_by[0] if stopped_by else None


@dataclass
class Running:
    """A server running on a thread of this process."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    service: Service  # the model, its limits, its metrics

    def stop(self, timeout: float = 60.0) -> None:
        """Stop as SIGTERM would: requests in flight are answered first."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the server at {self.url} did not stop within {timeout:.0f} s")

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(model, config: ServeConfig | None = None, *, model_id: str | None = None,
          timeout: float = 60.0) -> Running:
    """Serve `model` (a name or folder, or a loaded Embedder / Predictor) on a thread; returns once it
    answers. config.port 0 (the default here) takes a free port: see Running.url.

    >>> with start("sentence-transformers/all-MiniLM-L6-v2") as server:
    ...     urllib.request.urlopen(server.url + "/health").read()
    """
    config = config or ServeConfig(port=0)
    if isinstance(model, (str, Path)):
        model_id = model_id or str(model)
        model = load_model(model, dtype=config.dtype, device=config.device, max_length=config.max_length,
                         backend=config.backend)
    app = create_app(model, model_id or "model", config)
    sock = listen(config.host, config.port)
    server = _uvicorn(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="bertkit-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {_url(sock)} did not start within {timeout:.0f} s")
        time.sleep(0.01)
    return Running(_url(sock), server, thread, app.state.service)


def serve_and_query(model: str | Path, texts: Sequence[str], *, config: ServeConfig | None = None) -> dict:
    """Serve `model` on a free loopback port, ask it about `texts` through the `openai` client and
    plain HTTP, stop it. Returns what was asked and answered, and how long it took (print it with
    `describe`):

        {"url", "kind", "texts", "openai": {...}, "http": {route: answers, "/info": ...},
         "seconds": {"start", "requests", "stop"}}

    The openai client lists the model and, for an encoder, embeds the texts (their first values are
    shown); plain HTTP asks the model's own route (/embed, /predict, /ner or /qa: for QA each text
    is a question about the next one).
    """
    import openai

    texts = list(texts)
    t0 = time.perf_counter()
    with start(model, replace(config or ServeConfig(), host="127.0.0.1", port=0)) as server:
        t1 = time.perf_counter()
        svc = server.service
        key = svc.config.api_key or "none"  # the openai client insists on a key
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        answers: dict = {"url": server.url, "kind": svc.kind, "texts": texts, "openai": {}, "http": {}}
        answers["openai"]["models"] = [m.id for m in client.models.list().data]
        if svc.kind == "embedding":
            vectors = [d.embedding for d in client.embeddings.create(model=svc.model_id, input=texts).data]
            answers["openai"]["embeddings"] = [{"text": t, "dim": len(v), "first": [round(x, 4) for x in v[:4]]}
                                               for t, v in zip(texts, vectors)]
            route, body = "/embed", {"inputs": texts}
        elif svc.kind in ("classification", "regression"):
            route, body = "/predict", {"inputs": [[t] for t in texts]}
        elif svc.kind == "token":
            route, body = "/ner", {"inputs": texts}
        else:
            answers["texts"] = texts[::2]
            route, body = "/qa", {"inputs": [{"question": q, "context": c} for q, c in zip(texts[::2], texts[1::2])]}
        answer = _post(server.url + route, body, key)
        if route == "/embed":
            answer = [{"dim": len(v), "norm": round(sum(x * x for x in v) ** 0.5, 4)} for v in answer]
        answers["http"][route] = answer
        answers["http"]["/info"] = _get(server.url + "/info", key)
        t2 = time.perf_counter()
    answers["seconds"] = {"start": round(t1 - t0, 2), "requests": round(t2 - t1, 2),
                          "stop": round(time.perf_counter() - t2, 2)}
    return answers


def describe(answers: dict) -> str:
    """serve_and_query's answers as a few lines to print."""
    lines = [f"served on {answers['url']} ({answers['kind']}); the openai client lists "
             f"{', '.join(answers['openai']['models'])}"]
    for e in answers["openai"].get("embeddings", []):
        lines.append(f"  openai embeddings.create: {e['text']!r} -> {e['dim']} numbers {e['first']} ...")
    (route, answer), = [(r, a) for r, a in answers["http"].items() if r != "/info"]
    for text, a in zip(answers["texts"], answer):
        if route == "/predict":
            a = ", ".join(f"{p['label']} {p['score']:.3f}" for p in a)
        elif route == "/ner":
            a = ", ".join(f"{e['text']} ({e['entity']})" for e in a) or "no entities"
        elif route == "/qa":
            a = f"{a['answer']!r} ({a['score']:.2f})"
        lines.append(f"  POST {route}: {text!r} -> {a}")
    took = answers["seconds"]
    lines.append(f"  start {took['start']:.1f} s, requests {took['requests']:.1f} s, stop {took['stop']:.1f} s")
    return "\n".join(lines)


def _post(url: str, body: dict, key: str) -> object:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.loads(r.read())


def _get(url: str, key: str) -> object:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())
