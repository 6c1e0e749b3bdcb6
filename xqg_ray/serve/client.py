"""A small HTTP client for the search service, and the function behind `xqg-ray search`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import requests

from xqg_ray.errors import XqgError


class ServiceError(XqgError):
    """The service refused or failed a request; `status` is the HTTP status (None: unreachable)."""

    def __init__(self, status: int | None, message: str):
        super().__init__(message)
        self.status = status


class SearchClient:
    """Calls a running service; answers are the service's JSON (`results`, `partial`, ...)."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        url = self.base_url + path
        try:
            response = self.session.request(method, url, json=body, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise ServiceError(None, f"{url}: cannot reach the search service: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServiceError(
                response.status_code, f"{url}: HTTP {response.status_code}: {detail}"
            )
        return response.json()

    def search(self, queries: Sequence[str], k: int = 10, include_text: bool = False) -> dict:
        body = {"queries": list(queries), "k": k, "include_text": include_text}
        return self._request("POST", "/search", body)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, include_text: bool = False) -> dict:
        body = {"vectors": np.asarray(vectors).tolist(), "k": k, "include_text": include_text}
        return self._request("POST", "/search_vectors", body)

    def health(self) -> dict:
        return self._request("GET", "/healthz")

    def stats(self) -> dict:
        return self._request("GET", "/stats")


def search_cli(
    url: str,
    queries: Sequence[str],
    k: int = 10,
    include_text: bool = False,
    token: str | None = None,
) -> dict:
    """One search request for the CLI; a partial answer is returned, flagged, not hidden."""
    return SearchClient(url, token=token).search(queries, k=k, include_text=include_text)
