"""HTTP request and response bodies: the service's OpenAPI schema comes from these models.

Structural rules (types, k >= 1, at least one query) live here; limits that depend on the
deployment's configuration (largest k, queries per request, query length) are checked by the
router, which answers 422 with the same kind of message.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Body):
    queries: list[str] = Field(min_length=1, description="Query texts, any language.")
    k: int = Field(default=10, ge=1, description="Passages per query.")
    include_text: bool = Field(default=False, description="Add each passage's title and text.")


class VectorSearchRequest(_Body):
    vectors: list[list[float]] = Field(
        min_length=1, description="Query vectors, already encoded (one row per query)."
    )
    k: int = Field(default=10, ge=1, description="Passages per query.")
    include_text: bool = Field(default=False, description="Add each passage's title and text.")


class Hit(BaseModel):
    id: int = Field(description="Global passage id in the index.")
    pid: str | None = Field(default=None, description="The corpus pid, when the index has one.")
    score: float = Field(description="Inner product (or L2 distance for an L2 index).")
    title: str | None = None
    text: str | None = None


class SearchResponse(BaseModel):
    results: list[list[Hit]] = Field(description="One ranked list per query, best first.")
    partial: bool = Field(
        description="True when some shards did not answer: results are incomplete."
    )
    missing_shards: list[int] = Field(description="The shards whose entries are missing.")


class Health(BaseModel):
    status: str
    shards: int
    encoder: bool


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a message (or FastAPI's list of validation errors)."""

    detail: str | list[dict[str, Any]] = Field(description="What is wrong with the request.")
    missing_shards: list[int] | None = Field(
        default=None, description="503 only: the shards that did not answer."
    )
