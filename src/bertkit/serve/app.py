"""The HTTP API: request and response models, routes, limits and errors.

    route                served by              request -> response
    POST /v1/embeddings  encoders               OpenAI: {input, encoding_format} -> {data: [{embedding, index}], usage}
    GET  /v1/models      every model            OpenAI: {data: [{id, object: "model"}]}
    POST /embed          encoders               TEI: {inputs, normalize, truncate} -> [[float, ...], ...]
    POST /predict        sequence classifiers   TEI: {inputs: text | [text, pair] | [[text, pair?], ...]}
                                                -> [{label, score}, ...] best first (a list of those for a batch)
    POST /rerank         cross-encoders, below  TEI: {query, texts, return_text} -> [{index, score, text?}] best first
    POST /ner            token classifiers      {inputs: text | [text, ...]} -> [{entity, text, start, end, score}]
    POST /qa             question answering     {inputs: {question, context} | [...]} -> {answer, score, start, end}
    POST /tokenize       every model            TEI: {inputs, add_special_tokens}
                                                -> [[{id, text, special, start, stop}, ...], ...]
    GET  /health, /info, /metrics (Prometheus), / (the playground page), /openapi.json, /docs

TEI is Hugging Face's text-embeddings-inference. A route the model does not serve answers 424
(TEI's code for it), naming the routes it does serve. /rerank is served by a sequence
classifier with one output (a cross-encoder's relevance score, as in sentence-transformers'
CrossEncoder and TEI: ranked by that score) or with two labels (ranked by the probability of
label 1, e.g. MRPC's "equivalent"; /info names it as rerank_label).

Limits: more inputs than max_client_batch_size, or a text over the model's max length without
truncate=true -> 413 naming the limit; past max_concurrent_requests requests in flight -> 429 at
once; bad JSON or a wrong type -> 422 naming the field; with an API key, no or a wrong
`Authorization: Bearer KEY` -> 401 (/health and / stay open). Errors are TEI's
{"error", "error_type"}, or OpenAI's {"error": {"message", "type", "param", "code"}} under /v1/.
A model error fails only the requests of that batch (500); the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from bertkit import __version__
from bertkit.infer import Embedder
from bertkit.serve.batcher import Batcher, BatchFailed
from bertkit.serve.metrics import CONTENT_TYPE, Metrics
from bertkit.serve.schemas import (
    ERRORS,
    REQUEST_FIELDS,
    Answer,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    Entity,
    Info,
    ModelList,
    NerRequest,
    Prediction,
    PredictRequest,
    QAInput,
    QARequest,
    Rank,
    RerankRequest,
    Token,
    TokenizeRequest,
)

log = logging.getLogger("bertkit.serve")
STATIC = Path(__file__).parent / "static"
# Module-level: FastAPI resolves the string annotations of dependencies in this module's globals.
_BEARER = HTTPBearer(auto_error=False, description="only when the server was started with --api-key")


@dataclass
class ServeConfig:
    """What `bertkit serve` is started with (the model aside)."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (the one taken is printed)
    dtype: Literal["fp32", "bf16", "int8"] | None = None  # None: fp32, or what an ONNX export was exported in
    device: str = "cpu"
    backend: Literal["torch", "onnx"] = "torch"  # onnx: a `bertkit export` folder run by ONNX Runtime
    max_length: int | None = None  # tokens per input; default: the model's (sentence-transformers' setting if any)
    max_batch_tokens: int = 4096  # word pieces per model batch
    max_client_batch_size: int = 32  # inputs per request
    max_concurrent_requests: int = 512  # requests in flight; past that, 429
    api_key: str | None = None


# ---------------------------------------------------------------------------- errors


class ServeError(Exception):
    """An answer other than 200: status, one-line message, kind (metrics label and TEI error_type)."""

    def __init__(self, status: int, message: str, kind: str = "validation", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


_TEI_TYPES = {"validation": "validation", "too_large": "validation", "overloaded": "overloaded",
              "unauthorized": "validation", "wrong_route": "validation", "backend": "backend"}
_OPENAI_TYPES = {"validation": "invalid_request_error", "too_large": "invalid_request_error",
                 "overloaded": "rate_limit_error", "unauthorized": "authentication_error",
                 "wrong_route": "invalid_request_error", "backend": "server_error"}


def _error_response(request: Request, e: ServeError) -> Response:
    if request.url.path.startswith("/v1/"):
        body = {"error": {"message": e.message, "type": _OPENAI_TYPES[e.kind], "param": e.param, "code": None}}
    else:
        body = {"error": e.message, "error_type": _TEI_TYPES[e.kind]}
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return _json(body, e.status, headers)


def _validation_message(errors: Sequence[dict]) -> tuple[str, str | None]:
    """pydantic's errors -> one line naming the field, and the field."""
    first = errors[0]
    if first["type"] == "json_invalid":
        where = first["loc"][-1] if isinstance(first["loc"][-1], int) else None
        reason = first.get("ctx", {}).get("error", "")
        return f"invalid JSON{f' at character {where}' if where is not None else ''}: {reason}".rstrip(": "), None

    def path(e: dict) -> list:
        # loc: ("body", field, index, ...) plus the names of union members tried ("str", "list[str]"): left out.
        return [p for p in e["loc"][1:] if isinstance(p, int) or p in REQUEST_FIELDS]

    if first["type"] == "missing" and not path(first):
        return "the request needs a JSON object body", None
    # The deepest error is the one that matched the rest of the structure (["a", 3]: item 1), and
    # there a value error beats the union members whose type did not fit at all.
    deepest = max((path(e) for e in errors), key=len)
    mine = [e for e in errors if path(e) == deepest]
    if any(not e["type"].endswith("_type") for e in mine):
        mine = [e for e in mine if not e["type"].endswith("_type")]
    reasons = []
    for e in mine:
        msg = e["msg"].removeprefix("Value error, ")
        if msg not in reasons:
            reasons.append(msg)
    if len(reasons) > 1 and all(r.startswith("Input should be ") for r in reasons):
        reasons = ["should be " + " or ".join(r.removeprefix("Input should be ") for r in reasons)]
    field = ".".join(str(p) for p in deepest)
    return f"{field or 'body'}: {'; '.join(reasons)}", field or None


def _json(obj, status: int = 200, headers: dict | None = None) -> Response:
    """Compact JSON; NaN or infinity is an error, not invalid JSON."""
    body = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status, headers=headers, media_type="application/json")


# ---------------------------------------------------------------------------- the model behind the routes


ROUTES = {
    "embedding": ["/v1/embeddings", "/embed", "/tokenize"],
    "classification": ["/predict", "/tokenize"],
    "regression": ["/predict", "/rerank", "/tokenize"],
    "token": ["/ner", "/tokenize"],
    "qa": ["/qa", "/tokenize"],
}
_WHAT = {"embedding": "an encoder (embeddings)", "classification": "a sequence classifier",
         "regression": "a sequence regressor (cross-encoder)", "token": "a token classifier (NER)",
         "qa": "a question-answering model"}


class Service:
    """A loaded model (Embedder or Predictor) with its batcher, limits and metrics."""

    def __init__(self, model, model_id: str, config: ServeConfig):
        self.model, self.model_id, self.config = model, model_id, config
        self.kind = "embedding" if isinstance(model, Embedder) else model.kind
        self.labels = None if self.kind == "embedding" else (list(model.labels) if model.labels else None)
        self.routes = list(ROUTES[self.kind])
        # Rerank: by a single output, or by the probability of label 1 of a two-label classifier.
        self.rerank_label = self.labels[1] if self.kind == "classification" and len(self.labels or ()) == 2 else None
        if self.rerank_label is not None:
            self.routes.insert(1, "/rerank")
        self.metrics = Metrics()
        self.batcher = Batcher(model.run, config.max_batch_tokens, on_batch=self.metrics.batch)
        self.metrics.queue_size.set_function(lambda: len(self.batcher))
        self.in_flight = 0
        self.created = int(time.time())
        # Long requests are tokenized on a thread of their own, so that the event loop keeps
        # answering meanwhile (pure Python: the thread shares the interpreter, but the loop gets
        # its turns); short ones right on the loop, as a hop to a thread costs more than they do.
        self.tokenizing = ThreadPoolExecutor(1, thread_name_prefix="bertkit-tokenize")

    def serves(self, route: str) -> None:
        if route not in self.routes:
            raise ServeError(424, f"this server runs {_WHAT[self.kind]}, which answers "
                                  f"{', '.join(self.routes)}; not {route}", "wrong_route")

    @contextlib.asynccontextmanager
    async def admit(self):
        """A slot among max_concurrent_requests, or 429 at once (never an unbounded queue)."""
        if self.in_flight >= self.config.max_concurrent_requests:
            raise ServeError(429, f"too many requests in flight (max_concurrent_requests="
                                  f"{self.config.max_concurrent_requests}); retry later", "overloaded")
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    def check_count(self, n: int, field: str) -> None:
        if n == 0:
            raise ServeError(422, f"{field}: needs at least one input", param=field)
        if n > self.config.max_client_batch_size:
            raise ServeError(413, f"{field}: {n} inputs, more than max_client_batch_size="
                                  f"{self.config.max_client_batch_size}", "too_large", field)

    async def run(self, inputs: list, *, truncate: bool | None, field: str) -> tuple[list, int]:
        """Inputs -> (results in order, word pieces) through the tokenizer thread, the queue and the model.

        truncate: False refuses inputs over the max length (413), True lets the model cut them,
        None refuses them on a route that has no truncate option.
        """
        self.check_count(len(inputs), field)
        loop = asyncio.get_running_loop()
        async with self.admit():
            try:
                if _chars(inputs) <= INLINE_CHARS:  # a few sentences: tokenizing is cheaper than a thread hop
                    prepared = self.model.prepare(inputs)
                else:
                    prepared = await loop.run_in_executor(self.tokenizing, self.model.prepare, inputs)
            except TypeError as e:
                raise ServeError(422, f"{field}: {e}", param=field) from None
            except ValueError as e:  # the tokenizer could not fit an input into max_length
                raise ServeError(413, f"{field}: {e}", "too_large", field) from None
            if not truncate:
                cut = [i for i, p in enumerate(prepared) if getattr(p, "truncated", False)]
                if cut:
                    where = f"{field}.{cut[0]}" if len(inputs) > 1 else field
                    fix = "or send truncate=true" if truncate is False else "or use /embed with truncate=true"
                    raise ServeError(413, f"{where}: longer than the model's max_input_length="
                                          f"{self.model.max_length} tokens; shorten it {fix}", "too_large", field)
            try:
                results = await self.batcher.submit(prepared)
            except BatchFailed as e:
                raise ServeError(500, f"the model failed on the batch holding this request: {e}", "backend") from None
        return results, sum(p.n_tokens for p in prepared)

    def info(self) -> dict:
        if self.kind == "embedding":
            model_type = {"embedding": {"pooling": self.model.pooling, "dim": self.model.dim}}
        else:
            labels = self.labels or ["score"]
            what = "reranker" if self.kind == "regression" else "classifier"
            model_type = {what: {"id2label": {str(i): n for i, n in enumerate(labels)},
                                 "label2id": {n: i for i, n in enumerate(labels)}}}
        c = self.config
        return Info(model_id=self.model_id, kind=self.kind, model_type=model_type, model_dtype=self.model.dtype,
                    max_input_length=self.model.max_length, labels=self.labels, rerank_label=self.rerank_label,
                    routes=self.routes, max_batch_tokens=c.max_batch_tokens,
                    max_client_batch_size=c.max_client_batch_size, max_concurrent_requests=c.max_concurrent_requests,
                    version=__version__).model_dump()


INLINE_CHARS = 2000  # a few sentences: tokenized on the event loop, more on the tokenizing thread


def _chars(inputs: list) -> int:
    return sum(len(x) if isinstance(x, str) else sum(len(y) for y in x) for x in inputs)


def _as_list(x) -> tuple[list, bool]:
    """inputs -> (list of inputs, whether a single one was sent)."""
    return ([x], True) if isinstance(x, (str, QAInput)) else (list(x), False)


# ---------------------------------------------------------------------------- the app


def create_app(model, model_id: str, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving `model` (an Embedder, or a Predictor of a fine-tuned head).

    Its batcher starts and stops with the app (lifespan): run it under uvicorn (serve.server).
    """
    config = config or ServeConfig()
    svc = Service(model, model_id, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.batcher.start()
        yield
        await svc.batcher.stop()  # uvicorn has answered every request by now
        svc.tokenizing.shutdown(wait=True)

    app = FastAPI(title="bertkit serve", version=__version__, lifespan=lifespan,
                  description=f"{model_id}: {_WHAT[svc.kind]}. Routes it answers: {', '.join(svc.routes)}.")
    app.state.service = svc
    app.add_middleware(_Observe, metrics=svc.metrics, routes=set(ROUTES_ALL))

    async def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        key = config.api_key
        if key is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise ServeError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", "unauthorized")

    api = APIRouter(dependencies=[Depends(authorize)], responses=ERRORS)
    open_ = APIRouter()

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError) -> Response:
        svc.metrics.errors.labels(e.kind).inc()
        return _error_response(request, e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> Response:
        message, field = _validation_message(e.errors())
        return await _serve_error(request, ServeError(422, message, param=field))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
        message = {404: f"no route {request.url.path}; see /docs", 405: f"{request.method} not allowed on "
                   f"{request.url.path}"}.get(e.status_code, str(e.detail))
        return _error_response(request, ServeError(e.status_code, message))

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        svc.metrics.errors.labels("backend").inc()
        return _error_response(request, ServeError(500, f"internal error: {type(e).__name__}: {e}", "backend"))

    # -- OpenAI

    @api.post("/v1/embeddings", response_model=EmbeddingsResponse, tags=["OpenAI"])
    async def embeddings(req: EmbeddingsRequest) -> Response:
        svc.serves("/v1/embeddings")
        if req.dimensions is not None and req.dimensions != model.dim:
            raise ServeError(422, f"dimensions: this model's embeddings have {model.dim}", param="dimensions")
        texts, _ = _as_list(req.input)
        vectors, tokens = await svc.run(texts, truncate=None, field="input")  # OpenAI's API has no truncate
        unit = _normalize(np.stack(vectors))
        if req.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in unit]
        else:
            data = unit.tolist()
        return _json({"object": "list", "model": model_id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                      "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(data)]})

    @api.get("/v1/models", response_model=ModelList, tags=["OpenAI"])
    async def models() -> Response:
        return _json({"object": "list", "data": [{"id": model_id, "object": "model", "created": svc.created,
                                                  "owned_by": "bertkit"}]})

    # -- text-embeddings-inference

    @api.post("/embed", response_model=list[list[float]], tags=["text-embeddings-inference"])
    async def embed(req: EmbedRequest) -> Response:
        svc.serves("/embed")
        texts, _ = _as_list(req.inputs)
        vectors, _ = await svc.run(texts, truncate=req.truncate, field="inputs")
        vectors = np.stack(vectors)
        return _json((_normalize(vectors) if req.normalize else vectors).tolist())

    @api.post("/predict", response_model=list[Prediction] | list[list[Prediction]], tags=["text-embeddings-inference"])
    async def predict(req: PredictRequest) -> Response:
        svc.serves("/predict")
        if req.raw_scores and svc.kind == "classification":
            raise ServeError(422, "raw_scores: this classifier answers probabilities only", param="raw_scores")
        inputs, single = _predict_inputs(req.inputs)
        results, _ = await svc.run(inputs, truncate=req.truncate, field="inputs")
        answers = [_predictions(r, svc) for r in results]
        return _json(answers[0] if single else answers)

    @api.post("/rerank", response_model=list[Rank], tags=["text-embeddings-inference"])
    async def rerank(req: RerankRequest) -> Response:
        svc.serves("/rerank")
        if req.raw_scores and svc.kind == "classification":
            raise ServeError(422, "raw_scores: this classifier answers probabilities only", param="raw_scores")
        results, _ = await svc.run([(req.query, t) for t in req.texts], truncate=req.truncate, field="texts")
        scores = [r["score"] if svc.kind == "regression" else r["scores"][svc.rerank_label] for r in results]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return _json([{"index": i, "score": scores[i], **({"text": req.texts[i]} if req.return_text else {})}
                      for i in order])

    @api.post("/tokenize", response_model=list[list[Token]], tags=["text-embeddings-inference"])
    async def tokenize(req: TokenizeRequest) -> Response:
        texts, _ = _as_list(req.inputs)
        svc.check_count(len(texts), "inputs")
        loop = asyncio.get_running_loop()
        async with svc.admit():
            tokens = await loop.run_in_executor(svc.tokenizing, _tokens, model.tokenizer, texts,
                                                req.add_special_tokens)
        return _json(tokens)

    # -- the task kinds TEI and OpenAI have no route for

    @api.post("/ner", response_model=list[Entity] | list[list[Entity]], tags=["tasks"])
    async def ner(req: NerRequest) -> Response:
        svc.serves("/ner")
        texts, single = _as_list(req.inputs)
        results, _ = await svc.run(texts, truncate=req.truncate, field="inputs")
        answers = [[{k: e[k] for k in ("entity", "text", "start", "end", "score")} for e in r["entities"]]
                   for r in results]
        return _json(answers[0] if single else answers)

    @api.post("/qa", response_model=Answer | list[Answer], tags=["tasks"])
    async def qa(req: QARequest) -> Response:
        svc.serves("/qa")
        questions, single = _as_list(req.inputs)
        results, _ = await svc.run([(q.question, q.context) for q in questions], truncate=True, field="inputs")
        answers = [{k: r[k] for k in ("answer", "score", "start", "end")} for r in results]
        return _json(answers[0] if single else answers)

    # -- about the server

    @open_.get("/health", tags=["server"])
    async def health() -> Response:
        if not svc.batcher.running:
            return _json({"status": "the model worker is not running"}, 503)
        return _json({"status": "ok"})

    @api.get("/info", response_model=Info, tags=["server"])
    async def info() -> Response:
        return _json(svc.info())

    @api.get("/metrics", tags=["server"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics() -> Response:
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

    @open_.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.include_router(api)
    app.include_router(open_)
    return app


ROUTES_ALL = ("/v1/embeddings", "/v1/models", "/embed", "/predict", "/rerank", "/tokenize", "/ner", "/qa",
              "/health", "/info", "/metrics", "/", "/openapi.json", "/docs")


def _normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _predict_inputs(inputs) -> tuple[list, bool]:
    """TEI's /predict inputs: a text, a [text, pair], or a batch of [text] / [text, pair] lists."""
    if isinstance(inputs, str):
        return [inputs], True
    if inputs and all(isinstance(x, str) for x in inputs):
        if len(inputs) > 2:
            raise ServeError(422, "inputs: a list of strings is ONE input, a [text] or a [text, pair]; "
                                  "send a batch as a list of lists", param="inputs")
        return [inputs[0] if len(inputs) == 1 else tuple(inputs)], True
    batch = []
    for i, x in enumerate(inputs):
        if not 1 <= len(x) <= 2:
            raise ServeError(422, f"inputs.{i}: {len(x)} strings; an input is a [text] or a [text, pair]",
                             param="inputs")
        batch.append(x[0] if len(x) == 1 else tuple(x))
    return batch, False


def _predictions(result: dict, svc: Service) -> list[dict]:
    """A Predictor result -> TEI's predictions, best first."""
    if "scores" in result:
        return [{"label": k, "score": v} for k, v in sorted(result["scores"].items(), key=lambda kv: -kv[1])]
    return [{"label": "score", "score": result["score"]}]  # regression: the raw output


def _tokens(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[dict]]:
    out = []
    for text in texts:
        enc = tokenizer.encode(text, truncation=False)
        row = []
        for tid, (a, b), seq in zip(enc.input_ids, enc.offsets, enc.sequence_ids):
            if seq is None:
                if add_special_tokens:
                    row.append({"id": tid, "text": tokenizer.convert_ids_to_tokens(tid), "special": True,
                                "start": None, "stop": None})
            else:
                row.append({"id": tid, "text": text[a:b], "special": False, "start": a, "stop": b})
        out.append(row)
    return out


class _Observe:
    """ASGI middleware: every request's status and latency into the metrics (route label: the
    route's path, or "other" so that scanners cannot blow up the number of series)."""

    def __init__(self, app, metrics: Metrics, routes: set[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500
        route = scope["path"] if scope["path"] in self.routes else "other"

        async def observe(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
