"""serve: the real server on a free loopback port, driven over HTTP, for every kind of model.

One server per model kind (module fixtures): an encoder (the real all-MiniLM-L6-v2), and the
real MiniLM with fresh heads for a sentiment classifier, a cross-encoder (one output), a token
classifier and a QA model. Every answer is compared with a direct in-process call of the same
model on the same input.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'bertkit[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx (dev extra) drives the server")

import torch  # noqa: E402

from bertkit.batching import Prepared  # noqa: E402
from bertkit.cli import main  # noqa: E402
from bertkit.heads import (  # noqa: E402
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertkit.infer import Embedder  # noqa: E402
from bertkit.serve import ServeConfig, describe, load_model, serve_and_query, start  # noqa: E402
from conftest import ROOT, data_path  # noqa: E402

NER_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
LIMIT = 60.0  # seconds: the most any one request may take here


from bertkit.tasks.predictor import Predictor  # noqa: E402

# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sst2() -> list[str]:
    """Real SST-2 dev sentences, shortest to longest."""
    lines = data_path("glue", "SST-2", "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return sorted((line.split("\t")[0].strip() for line in lines), key=len)


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    """Real IMDB reviews over 256 word pieces."""
    with open(data_path("imdb", "test.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(next(f))["text"] for _ in range(60)]
    return [t for t in texts if len(t) > 2000][:6]


@pytest.fixture(scope="module")
def embedder(minilm) -> Embedder:
    """The direct reference: what the server loads, loaded again."""
    return load_model(minilm)


@pytest.fixture(scope="module")
def encoder(minilm):
    config = ServeConfig(port=0, max_client_batch_size=64)
    with start(minilm, config, model_id="sentence-transformers/all-MiniLM-L6-v2") as server:
        yield server


def _save_head(minilm, out: Path, head, **overrides) -> Path:
    torch.manual_seed(0)  # the fresh head's weights
    head.from_pretrained(minilm, **overrides).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def heads(minilm, tmp_path_factory) -> dict[str, Path]:
    """The real MiniLM with fresh heads, saved as fine-tuned checkpoints are."""
    d = tmp_path_factory.mktemp("heads")
    return {
        "classification": _save_head(minilm, d / "sentiment", BertForSequenceClassification,
                                     id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}),
        "regression": _save_head(minilm, d / "cross", BertForSequenceClassification, id2label={0: "LABEL_0"},
                                 label2id={"LABEL_0": 0}, problem_type="regression"),
        "token": _save_head(minilm, d / "ner", BertForTokenClassification, id2label=dict(enumerate(NER_TAGS)),
                            label2id={t: i for i, t in enumerate(NER_TAGS)}),
        "qa": _save_head(minilm, d / "qa", BertForQuestionAnswering),
    }


@pytest.fixture(scope="module")
def predictors(heads) -> dict:
    return {kind: Predictor.from_pretrained(path) for kind, path in heads.items()}


@pytest.fixture(scope="module")
def servers(heads):
    """One server per task kind, each on its own free port."""
    running = {kind: start(Predictor.from_pretrained(path), ServeConfig(port=0), model_id=path.name)
               for kind, path in heads.items()}
    yield running
    for server in running.values():
        server.stop()


def post(url: str, body, **kw) -> httpx.Response:
    return httpx.post(url, json=body, timeout=LIMIT, **kw)


def close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32), atol=atol)


# ---------------------------------------------------------------------------- embeddings


def test_openai_client_embeddings_equal_the_embedder(encoder, embedder, sst2):
    openai = pytest.importorskip("openai")
    texts = sst2[::100][:8]
    client = openai.OpenAI(base_url=encoder.url + "/v1", api_key="none", max_retries=0, timeout=LIMIT)
    assert [m.id for m in client.models.list().data] == [encoder.service.model_id]
    expected = embedder(texts)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)  # OpenAI's vectors are unit length
    tokens = sum(len(embedder.tokenizer.encode(t).input_ids) for t in texts)
    # Left out, encoding_format is base64 on the wire and the client decodes it.
    for fmt in ({}, {"encoding_format": "float"}, {"encoding_format": "base64"}):
        response = client.embeddings.create(model="any", input=texts, **fmt)
        assert [d.index for d in response.data] == list(range(len(texts)))
        vectors = [np.frombuffer(base64.b64decode(d.embedding), "<f4") if fmt.get("encoding_format") == "base64"
                   else d.embedding for d in response.data]
        close(vectors, expected)
        assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    one = client.embeddings.create(model="any", input=texts[0])  # a single string
    close([one.data[0].embedding], expected[:1])


def test_embed_normalize_and_truncate(encoder, embedder, sst2, reviews):
    texts = [sst2[5], sst2[-5]]
    raw = post(encoder.url + "/embed", {"inputs": texts, "normalize": False}).json()
    close(raw, embedder(texts))
    unit = post(encoder.url + "/embed", {"inputs": texts[0]}).json()  # TEI default: normalize
    assert len(unit) == 1 and abs(np.linalg.norm(unit[0]) - 1) < 1e-5
    # A review over the model's 256 tokens: 413 naming the limit, unless truncate.
    r = post(encoder.url + "/embed", {"inputs": [texts[0], reviews[0]]})
    assert r.status_code == 413 and "inputs.1" in r.json()["error"] and "max_input_length=256" in r.json()["error"]
    r = post(encoder.url + "/embed", {"inputs": [reviews[0]], "truncate": True, "normalize": False})
    close(r.json(), embedder([reviews[0]]))  # the Embedder keeps the first 256 tokens too


def test_int8_serves_close_to_fp32(minilm, embedder, sst2):
    texts = sst2[200:204]
    with start(minilm, ServeConfig(port=0, dtype="int8")) as server:
        assert httpx.get(server.url + "/info", timeout=LIMIT).json()["model_dtype"] == "int8"
        got = np.array(post(server.url + "/embed", {"inputs": texts}).json())
    want = embedder(texts)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    cosine = (got * want).sum(1)
    assert cosine.min() > 0.95 and not np.allclose(got, want, atol=1e-4)  # int8 really ran, and is close


def test_tokenize_is_the_tokenizer(encoder, embedder):
    text = "Hugging Face's tokenizer, naïvely: 3.5 cafés!"
    enc = embedder.tokenizer.encode(text, truncation=False)
    (tokens,) = post(encoder.url + "/tokenize", {"inputs": text}).json()
    assert [t["id"] for t in tokens] == enc.input_ids
    assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    for t, (a, b) in zip(tokens[1:-1], enc.offsets[1:-1]):
        assert (t["start"], t["stop"], t["text"], t["special"]) == (a, b, text[a:b], False)
    (bare,) = post(encoder.url + "/tokenize", {"inputs": [text], "add_special_tokens": False}).json()
    assert [t["id"] for t in bare] == enc.input_ids[1:-1]


# ---------------------------------------------------------------------------- every route, every kind


SERVES = {
    "embedding": {"/v1/embeddings", "/embed", "/tokenize"},
    "classification": {"/predict", "/rerank", "/tokenize"},
    "regression": {"/predict", "/rerank", "/tokenize"},
    "token": {"/ner", "/tokenize"},
    "qa": {"/qa", "/tokenize"},
}
BODIES = {
    "/v1/embeddings": {"input": ["a film"]},
    "/embed": {"inputs": "a film"},
    "/predict": {"inputs": "a film"},
    "/rerank": {"query": "a film", "texts": ["a movie", "a fish"]},
    "/ner": {"inputs": "Angela Merkel visited Paris"},
    "/qa": {"inputs": {"question": "who?", "context": "Angela Merkel visited Paris"}},
    "/tokenize": {"inputs": "a film"},
}


@pytest.mark.parametrize("kind", list(SERVES))
def test_every_route_answers_or_says_what_the_model_serves(kind, encoder, servers):
    server = encoder if kind == "embedding" else servers[kind]
    info = httpx.get(server.url + "/info", timeout=LIMIT).json()
    assert info["kind"] == kind and set(info["routes"]) == SERVES[kind]
    assert info["max_input_length"] == server.service.model.max_length and info["model_dtype"] == "fp32"
    assert info["max_client_batch_size"] == server.service.config.max_client_batch_size
    for route, body in BODIES.items():
        r = post(server.url + route, body)
        if route in SERVES[kind]:
            assert r.status_code == 200, (route, r.text)
        else:
            assert r.status_code == 424, (route, r.text)
            message = r.json()["error"]["message"] if route.startswith("/v1/") else r.json()["error"]
            assert all(served in message for served in SERVES[kind]), message
    assert httpx.get(server.url + "/health", timeout=LIMIT).json() == {"status": "ok"}
    assert httpx.get(server.url + "/v1/models", timeout=LIMIT).json()["data"][0]["id"] == info["model_id"]
    page = httpx.get(server.url + "/", timeout=LIMIT)
    assert page.status_code == 200 and "<title>bertkit serve</title>" in page.text
    schema = httpx.get(server.url + "/openapi.json", timeout=LIMIT).json()
    assert set(BODIES) <= set(schema["paths"])
    metrics = httpx.get(server.url + "/metrics", timeout=LIMIT).text
    assert 'bertkit_requests_total{route="/info",status="200"}' in metrics
    assert 'bertkit_errors_total{kind="wrong_route"}' in metrics
    assert "bertkit_batch_tokens_bucket" in metrics and "bertkit_queue_size" in metrics


def test_predict_single_pair_and_batch_equal_direct_calls(servers, predictors, sst2):
    url, p = servers["classification"].url, predictors["classification"]
    texts = [sst2[100], sst2[500], sst2[-10]]
    expected = p(texts + [(texts[0], texts[1])])

    def tei(result):  # all labels, best first
        return sorted(result["scores"].items(), key=lambda kv: -kv[1])

    single = post(url + "/predict", {"inputs": texts[0]}).json()
    assert [x["label"] for x in single] == [k for k, _ in tei(expected[0])]
    close([x["score"] for x in single], [v for _, v in tei(expected[0])], atol=1e-5)
    assert single[0]["label"] == expected[0]["label"]
    pair = post(url + "/predict", {"inputs": [texts[0], texts[1]]}).json()  # a list of two strings is ONE pair
    assert [x["label"] for x in pair] == [k for k, _ in tei(expected[3])]
    batch = post(url + "/predict", {"inputs": [[t] for t in texts] + [[texts[0], texts[1]]]}).json()
    assert len(batch) == 4
    for got, want in zip(batch, expected):
        close([x["score"] for x in got], [v for _, v in tei(want)])
    r = post(url + "/predict", {"inputs": ["a", "b", "c"]})
    assert r.status_code == 422 and "list of lists" in r.json()["error"]
    r = post(url + "/predict", {"inputs": "x", "raw_scores": True})
    assert r.status_code == 422 and "raw_scores" in r.json()["error"]


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_rerank_orders_by_the_direct_scores(kind, servers, predictors, sst2):
    query, texts = sst2[500], [sst2[10], sst2[300], sst2[700], sst2[-3]]
    direct = predictors[kind]([(query, t) for t in texts])
    scores = [r["score"] if kind == "regression" else r["scores"][predictors[kind].labels[1]] for r in direct]
    got = post(servers[kind].url + "/rerank", {"query": query, "texts": texts, "return_text": True}).json()
    assert [g["index"] for g in got] == sorted(range(4), key=lambda i: -scores[i])
    close([g["score"] for g in got], sorted(scores, reverse=True))
    assert [g["text"] for g in got] == [texts[g["index"]] for g in got]
    plain = post(servers[kind].url + "/rerank", {"query": query, "texts": texts}).json()
    assert all("text" not in g for g in plain)


def test_ner_entities_with_character_offsets(servers, predictors):
    texts = ["EU rejects German call to boycott British lamb .",
             "Peter Blackburn met  officials of Reuters in Brussels on Friday ."]  # a double space: offsets count it
    expected = predictors["token"](texts)
    got = post(servers["token"].url + "/ner", {"inputs": texts}).json()
    assert sum(len(g) for g in got) > 0  # a fresh head tags most words as something
    for text, g, want in zip(texts, got, expected):
        assert [(e["entity"], e["start"], e["end"], e["text"]) for e in g] == \
               [(e["entity"], e["start"], e["end"], e["text"]) for e in want["entities"]]
        assert all(text[e["start"]:e["end"]] == e["text"] for e in g)
        close([e["score"] for e in g], [e["score"] for e in want["entities"]])
    single = post(servers["token"].url + "/ner", {"inputs": texts[0]}).json()  # alone: padded differently
    assert [{**e, "score": 0} for e in single] == [{**e, "score": 0} for e in got[0]]
    close([e["score"] for e in single], [e["score"] for e in got[0]])


def test_qa_answer_spans_equal_direct_calls(servers, predictors, reviews):
    context = reviews[0]  # longer than one window: the best span over all windows
    questions = ["What did the reviewer think?", "Who is the director?"]
    expected = predictors["qa"]([(q, context) for q in questions])
    got = post(servers["qa"].url + "/qa", {"inputs": [{"question": q, "context": context} for q in questions]}).json()
    for g, want in zip(got, expected):
        assert (g["answer"], g["start"], g["end"]) == (want["answer"], want["start"], want["end"])
        assert context[g["start"]:g["end"]] == g["answer"]
        assert abs(g["score"] - want["score"]) < 1e-5
    one = post(servers["qa"].url + "/qa", {"inputs": {"question": questions[0], "context": context}}).json()
    assert (one["answer"], one["start"], one["end"]) == (got[0]["answer"], got[0]["start"], got[0]["end"])


# ---------------------------------------------------------------------------- batching under load


async def _clients(url: str, bodies: list[tuple[str, dict]], time_limit: float = 120.0) -> list[httpx.Response]:
    """One client per body, all at once (bounded: len(bodies) requests, time_limit seconds)."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=LIMIT, limits=limits) as client:
        return await asyncio.wait_for(asyncio.gather(*(client.post(route, json=body) for route, body in bodies)),
                                      time_limit)


def test_64_concurrent_clients_each_get_their_own_answer(encoder, embedder, servers, predictors, sst2, reviews):
    texts = sst2[::len(sst2) // 48][:48] + reviews[:4]  # mixed lengths: short sentences to truncated reviews
    labelled = sst2[1::len(sst2) // 12][:12]
    bodies = [("/embed", {"inputs": t, "normalize": False, "truncate": True}) for t in texts]
    before = _metric(encoder.url, "bertkit_batch_size_count")
    responses = asyncio.run(_clients(encoder.url, bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    expected = embedder(texts)
    for r, want in zip(responses, expected):
        close(r.json()[0], want)
    batches = _metric(encoder.url, "bertkit_batch_size_count") - before
    assert batches < len(texts)  # requests that arrived together ran together
    # Two kinds of server at once, the classifier's answers also each its own.
    responses = asyncio.run(_clients(servers["classification"].url, [("/predict", {"inputs": t}) for t in labelled]))
    for r, want in zip(responses, predictors["classification"](labelled)):
        assert r.status_code == 200 and r.json()[0]["label"] == want["label"]
        assert abs(r.json()[0]["score"] - want["score"]) < 1e-5


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=LIMIT).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def test_an_idle_server_runs_a_request_at_once(encoder, sst2):
    before = _metric(encoder.url, 'bertkit_queue_seconds_bucket{le="0.025"}')
    assert post(encoder.url + "/embed", {"inputs": sst2[42]}).status_code == 200
    assert _metric(encoder.url, 'bertkit_queue_seconds_bucket{le="0.025"}') == before + 1  # no wait for company


def test_answers_are_not_held_back_by_delayed_acks():
    # A model that takes no time: what is left is HTTP. Without TCP_NODELAY on the server's
    # sockets each answer (headers, then body) waits ~40 ms for the client's delayed ACK.
    class Instant:
        kind, labels, max_length, dim, pooling, tokenizer = "embedding", None, 16, 2, "mean", None

        def prepare(self, texts):
            return [Prepared([{"input_ids": [101, 102]}]) for _ in texts]

        def run(self, prepared, batch_size=32):
            return np.zeros((len(prepared), 2), np.float32)

    with start(Instant(), model_id="instant") as server, httpx.Client(base_url=server.url, timeout=LIMIT) as client:
        times = []
        for _ in range(25):
            t = time.perf_counter()
            assert client.post("/embed", json={"inputs": "a"}).json() == [[0.0, 0.0]]
            times.append(time.perf_counter() - t)
    assert np.median(times) < 0.03, times


def test_batches_take_the_oldest_inputs_up_to_the_token_budget():
    from bertkit.serve.batcher import Batcher

    class Input:
        def __init__(self, n_tokens: int):
            self.n_tokens = n_tokens

    seen, gate = [], threading.Event()

    def run(prepared, batch_size):
        seen.append([p.n_tokens for p in prepared])
        gate.wait(LIMIT)
        return [p.n_tokens * 10 for p in prepared]

    async def scenario():
        batcher = Batcher(run, max_batch_tokens=300)
        batcher.start()
        first = asyncio.create_task(batcher.submit([Input(50)]))  # alone: runs at once, holds the model
        while not seen:
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(batcher.submit([Input(n) for n in sizes]))
                for sizes in ([100, 100], [100], [250, 20], [400], [10])]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert results == [[500], [1000, 1000], [1000], [2500, 200], [4000], [100]]  # each answer to its own input
    # FIFO, within 300 word pieces (an input over the budget alone)
    assert seen == [[50], [100, 100, 100], [250, 20], [400], [10]]


class Gate:
    """Wraps a model so that its batches wait until the test opens the gate (and can fail on purpose)."""

    def __init__(self, model, poison: str = "POISON"):
        self.model, self.poison, self.open = model, poison, threading.Event()
        self.kind, self.labels, self.max_length = "embedding", None, model.max_length
        self.tokenizer, self.dim, self.pooling = model.tokenizer, model.dim, model.pooling
        self.prepare = model.prepare

    def run(self, prepared, batch_size=32):
        if not self.open.wait(LIMIT):
            raise TimeoutError("the test never opened the gate")
        if any(p.example == self.poison for p in prepared):
            raise RuntimeError("poisoned batch")
        return self.model.run(prepared, batch_size)


@pytest.fixture
def gated(embedder):
    """A server whose model waits for the test: 2 requests in flight at most, a batch per input."""
    model = Gate(embedder)
    original = embedder.prepare

    def prepare(texts):  # mark each input with its text, to poison one batch
        prepared = original(texts)
        for p, t in zip(prepared, texts):
            p.example = t
        return prepared

    model.prepare = prepare
    with start(model, ServeConfig(port=0, max_concurrent_requests=2, max_batch_tokens=1), model_id="gated") as s:
        yield s, model


def test_429_at_once_past_max_concurrent_requests(gated):
    server, model = gated

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=LIMIT) as client:
            first = [asyncio.create_task(client.post("/embed", json={"inputs": f"text {i}"})) for i in range(2)]
            while _in_flight(server) < 2:
                await asyncio.sleep(0.01)
            t = time.perf_counter()
            third = await client.post("/embed", json={"inputs": "one too many"})
            waited = time.perf_counter() - t
            model.open.set()
            return third, waited, await asyncio.gather(*first)

    third, waited, first = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert third.status_code == 429 and "max_concurrent_requests=2" in third.json()["error"]
    assert third.json()["error_type"] == "overloaded" and waited < 5
    assert [r.status_code for r in first] == [200, 200]
    assert _metric(server.url, 'bertkit_errors_total{kind="overloaded"}') == 1


def _in_flight(server) -> int:
    return server.service.in_flight


def test_a_failing_batch_fails_only_its_requests(gated):
    server, model = gated
    model.open.set()
    bodies = [("/embed", {"inputs": "fine"}), ("/embed", {"inputs": "POISON"})]
    ok, bad = asyncio.run(_clients(server.url, bodies))
    assert ok.status_code == 200
    assert bad.status_code == 500 and "poisoned batch" in bad.json()["error"] and bad.json()["error_type"] == "backend"
    assert post(server.url + "/embed", {"inputs": "still serving"}).status_code == 200
    assert _metric(server.url, 'bertkit_errors_total{kind="backend"}') == 1


# ---------------------------------------------------------------------------- bad requests


def test_malformed_requests_get_422_naming_the_field(encoder, servers):
    url = encoder.url
    r = httpx.post(url + "/embed", content=b'{"inputs": ["a",', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"].startswith("invalid JSON")
    cases = [({"inputs": 3}, "inputs"), ({"inputs": ["a", 3]}, "inputs.1"), ({}, "inputs"),
             ({"inputs": "a", "normalize": "sometimes"}, "normalize"), ({"inputs": []}, "inputs"),
             ({"inputs": "\ud800"}, "inputs")]
    for body, field in cases:
        r = httpx.post(url + "/embed", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"].startswith(f"{field}: "), (body, r.text)
        assert "\n" not in r.json()["error"]
    r = post(url + "/v1/embeddings", {"input": "a", "encoding_format": "int8"})
    error = r.json()["error"]  # OpenAI's error shape under /v1/
    assert r.status_code == 422 and error["param"] == "encoding_format" and "base64" in error["message"]
    r = post(url + "/v1/embeddings", {"input": "a", "dimensions": 12})
    assert r.status_code == 422 and "384" in r.json()["error"]["message"]
    r = post(servers["qa"].url + "/qa", {"inputs": {"question": "who?"}})
    assert r.status_code == 422 and r.json()["error"].startswith("inputs.context: ")
    assert httpx.get(url + "/nowhere", timeout=LIMIT).status_code == 404
    assert httpx.get(url + "/embed", timeout=LIMIT).status_code == 405


def test_413_names_the_limit(encoder, reviews):
    r = post(encoder.url + "/embed", {"inputs": ["a"] * 65})
    assert r.status_code == 413 and "max_client_batch_size=64" in r.json()["error"]
    r = post(encoder.url + "/v1/embeddings", {"input": reviews[0]})
    assert r.status_code == 413 and "max_input_length=256" in r.json()["error"]["message"]
    assert _metric(encoder.url, 'bertkit_errors_total{kind="too_large"}') >= 2


def test_api_key(embedder, minilm):
    openai = pytest.importorskip("openai")
    with start(embedder, ServeConfig(port=0, api_key="s3cret"), model_id="keyed") as server:
        assert httpx.get(server.url + "/health", timeout=LIMIT).status_code == 200  # open: load balancers ask it
        assert httpx.get(server.url + "/", timeout=LIMIT).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = post(server.url + "/embed", {"inputs": "a"}, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["error"]
            assert r.headers["WWW-Authenticate"] == "Bearer"
        assert httpx.get(server.url + "/info", timeout=LIMIT).status_code == 401
        r = post(server.url + "/embed", {"inputs": "a"}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0, timeout=LIMIT)
        assert len(client.embeddings.create(model="any", input="a").data[0].embedding) == 384
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="no", max_retries=0).embeddings.create(
                model="any", input="a")


@pytest.mark.parametrize("kind", ["embedding", "classification", "qa"])
def test_openapi_fuzzing_finds_no_server_error(kind, encoder, servers):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings

    server = encoder if kind == "embedding" else servers[kind]
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures, statuses = [], set()
    for operation in schema.get_all_operations():
        op = operation.ok()
        if op.method.upper() == "GET" and op.path == "/metrics":
            continue

        @settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case):
            response = case.call(timeout=LIMIT)
            statuses.add((case.path, response.status_code))
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.body!r:.200} -> {response.status_code} "
                                f"{response.text[:200]}")

        check()
    assert not failures, failures[:5]
    served = SERVES[kind] - {"/tokenize"}
    assert {path for path, status in statuses if status == 200} >= served  # the model really ran on fuzzed inputs


# ---------------------------------------------------------------------------- the process


def _serve_process(model, *args) -> tuple[subprocess.Popen, str]:
    """`bertkit serve` in a subprocess on a free port: (process, its URL from the line it prints)."""
    proc = subprocess.Popen([sys.executable, "-m", "bertkit.cli", "serve", str(model), "--port", "0", *args],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        found = re.search(r" on (http://127\.0\.0\.1:\d+)", line)
        if found:
            return proc, found.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"bertkit serve did not start: {proc.stderr.read()[-2000:]}")


def test_sigterm_answers_every_accepted_request_then_exits_143(minilm, embedder, sst2):
    proc, url = _serve_process(minilm, "--max-batch-tokens", "512")
    try:
        texts = sst2[-16:]  # the longest sentences: 12 such requests keep the model busy for a while
        n = 12

        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=LIMIT,
                                         limits=httpx.Limits(max_connections=n + 1)) as client:
                tasks = [asyncio.create_task(client.post("/embed", json={"inputs": texts, "normalize": False}))
                         for _ in range(n)]
                deadline = time.monotonic() + 60
                while _metric(url, "bertkit_requests_in_flight") < n:  # every request accepted
                    assert time.monotonic() < deadline, "the requests never all arrived"
                    await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                at = time.perf_counter()
                responses = await asyncio.gather(*tasks)
                return responses, time.perf_counter() - at

        responses, drained = asyncio.run(asyncio.wait_for(scenario(), 180))
        assert [r.status_code for r in responses] == [200] * n
        expected = embedder(texts)
        for r in responses:
            close(r.json(), expected)
        assert drained > 0.2  # they really were still in flight when the signal came
        assert proc.wait(60) == 143
        assert "stopped by SIGTERM after answering every request in flight" in proc.stderr.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=5)
    finally:
        proc.kill()
        proc.wait()


def test_cli_errors_are_one_line(tmp_path, minilm, capsys):
    def fails(*args: str) -> str:
        try:
            code = main(["serve", *args])
        except SystemExit as e:  # argparse: bad values fail at parse time
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        return err

    assert "no model" in fails()
    assert "nope" in fails(str(tmp_path / "nope"), "--port", "0")
    assert "not a TCP port" in fails(str(minilm), "--port", "70000")
    assert "must be at least 1" in fails(str(minilm), "--max-batch-tokens", "0")
    assert "two models given" in fails(str(minilm), "--model", str(tmp_path))
    with socket.socket() as taken:  # fails before loading the model
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert "cannot listen on 127.0.0.1" in fails(str(minilm), "--port", str(taken.getsockname()[1]))
    # Without the serve extra: how to install it, in one line.
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['fastapi'] = None; "
                        f"from bertkit.cli import main; sys.exit(main(['serve', {str(minilm)!r}]))"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 2 and "pip install 'bertkit[serve]'" in r.stderr and len(r.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------- the demo step and the page


def test_serve_and_query(minilm, embedder, predictors):
    pytest.importorskip("openai")
    texts = ["a gorgeous, witty film", "two hours I will never get back"]
    out = serve_and_query(minilm, texts)
    assert out["kind"] == "embedding" and out["openai"]["models"] == [str(minilm)]
    expected = embedder(texts)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    for got, want in zip(out["openai"]["embeddings"], expected):
        assert got["dim"] == 384 and np.allclose(got["first"], want[:4], atol=1e-4)
    assert out["http"]["/embed"] == [{"dim": 384, "norm": 1.0}] * 2
    assert set(out["seconds"]) == {"start", "requests", "stop"}
    out = serve_and_query(predictors["classification"], texts)  # a loaded model serves as well as a folder
    assert [p[0]["label"] for p in out["http"]["/predict"]] == [p["label"] for p in predictors["classification"](texts)]
    assert out["http"]["/info"]["labels"] == ["negative", "positive"]
    printed = describe(out)
    for text, want in zip(texts, predictors["classification"](texts)):
        assert f"POST /predict: {text!r} -> {want['label']} " in printed


@pytest.mark.parametrize("kind", ["embedding", "classification"])
def test_playground_shows_an_answer_in_headless_chromium(kind, encoder, embedder, servers, predictors, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    url = (encoder if kind == "embedding" else servers[kind]).url + "/"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=15000", "--window-size=1000,640"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "answered in" in dom, dom[-2000:]
    if kind == "embedding":  # the cosine table of the example sentences, as the model computes it
        texts = [html.unescape(t) for t in re.findall(r'<tr><th title="([^"]*)">\d+\. ', dom)]
        shown = np.array([float(x) for x in re.findall(r"<td[^>]*>(-?[\d.]+)</td>", dom)]).reshape(len(texts), -1)
        assert len(texts) == 4
        unit = embedder(texts)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        np.testing.assert_allclose(shown, unit @ unit.T, atol=0.006)
        assert shown[0, 1] > shown[0, 2] + 0.3  # guitar and guitar, not guitar and stocks
    else:
        example = "a gorgeous, witty, seductive movie."
        label = predictors[kind]([example])[0]["label"]
        assert re.search(r'class="lab best"><span>' + label, dom)
    shot = tmp_path / "playground.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000
    if kind == "embedding" and os.environ.get("BERTKIT_UPDATE_DOCS"):  # docs/serve_playground.png is this picture
        shutil.copyfile(shot, ROOT / "docs" / "serve_playground.png")
