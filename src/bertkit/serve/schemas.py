"""The request and response bodies of bertkit serve's routes (pydantic models: FastAPI checks
requests against them and /openapi.json describes them).

OpenAI's embeddings API (EmbeddingsRequest/Response, ModelList) and Hugging Face
text-embeddings-inference's (EmbedRequest, PredictRequest, RerankRequest, TokenizeRequest, Info,
ErrorResponse) keep their published field names, so existing clients work unchanged; NerRequest
and QARequest follow the same `inputs` convention.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field


def _unicode(text: str) -> str:
    """JSON may carry lone surrogates (\\ud800), which no tokenizer or UTF-8 answer can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode (a lone surrogate at character {e.start})") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class EmbeddingsRequest(BaseModel):
    input: Text | list[Text] = Field(description="a text, or a list of texts")
    model: str | None = Field(None, description="accepted and ignored: the server runs one model")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector as little-endian float32 bytes, base64-encoded")
    dimensions: int | None = Field(None, description="if given, must equal the model's")
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "bertkit"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbedRequest(BaseModel):
    inputs: Text | list[Text]
    normalize: bool = Field(True, description="unit-length vectors")
    truncate: bool = Field(False, description="cut texts over the max length instead of answering 413")


class PredictRequest(BaseModel):
    inputs: Text | list[Text] | list[list[Text]] = Field(
        description="one input: a text or a [text, pair]; a batch: a list of those, each as a list")
    raw_scores: bool = Field(False, description="not supported by classifiers (their scores are probabilities)")
    truncate: bool = False


class Prediction(BaseModel):
    label: str
    score: float


class RerankRequest(BaseModel):
    query: Text
    texts: list[Text]
    return_text: bool = False
    raw_scores: bool = False
    truncate: bool = False


class Rank(BaseModel):
    index: int
    score: float
    text: str | None = None


class NerRequest(BaseModel):
    inputs: Text | list[Text]
    truncate: bool = Field(False, description="words past the max length are tagged O instead of answering 413")


class Entity(BaseModel):
    entity: str = Field(description="the entity type, e.g. PER, ORG, LOC, MISC")
    text: str
    start: int = Field(description="character offset of the first character in the input")
    end: int = Field(description="character offset one past the last character")
    score: float


class QAInput(BaseModel):
    question: Text
    context: Text


class QARequest(BaseModel):
    inputs: QAInput | list[QAInput]


class Answer(BaseModel):
    answer: str
    score: float
    start: int = Field(description="character offset of the answer in the context")
    end: int


class TokenizeRequest(BaseModel):
    inputs: Text | list[Text]
    add_special_tokens: bool = True


class Token(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None = None
    stop: int | None = None


class Info(BaseModel):
    model_id: str
    kind: Literal["embedding", "classification", "regression", "token", "qa"]
    model_type: dict
    model_dtype: str
    max_input_length: int
    labels: list[str] | None
    rerank_label: str | None
    routes: list[str]
    max_batch_tokens: int
    max_client_batch_size: int
    max_concurrent_requests: int
    auto_truncate: bool = False
    version: str


class ErrorResponse(BaseModel):
    error: str
    error_type: str


REQUEST_FIELDS = {name for m in (EmbeddingsRequest, EmbedRequest, PredictRequest, RerankRequest, NerRequest,
                                  QAInput, QARequest, TokenizeRequest) for name in m.model_fields}
ERRORS = {code: {"model": ErrorResponse, "description": what} for code, what in [
    (401, "missing or wrong API key"), (413, "too many inputs, or a text too long"),
    (422, "malformed request"), (424, "this model does not serve the route"), (429, "too many requests in flight"),
    (500, "the model failed on this request's batch")]}
