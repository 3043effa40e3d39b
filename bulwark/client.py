"""The REST client the CLI uses: small functions over httpx with errors a user can read.

Over https the server's certificate is checked against ``ca`` (default ``BULWARK_REST_TLS_CA``, else the
system's CAs).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from shared.errors import BulwarkError

__all__ = ["ApiError", "Api"]


class ApiError(BulwarkError):
    """The API answered with an error (or not at all)."""

    def __init__(self, message: str, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Api:
    """Bulwark's REST API at ``base_url``."""

    def __init__(self, base_url: str, timeout: float = 10.0, token: str | None = None,
                 ca: Path | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ca_file = ca or os.environ.get("BULWARK_REST_TLS_CA")
        verify: Any = True
        if ca_file:
            import ssl

            verify = ssl.create_default_context(cafile=str(ca_file))
        self.http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, verify=verify)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach Bulwark at {self.http.base_url}: {exc}") from exc
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code >= 400:
            raise ApiError(f"{method} {path}: HTTP {resp.status_code}", resp.status_code, body)
        return body

    def health(self) -> tuple[int, Any]:
        """(HTTP status, body) of /healthz."""
        try:
            resp = self.http.get("/healthz")
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach Bulwark at {self.http.base_url}: {exc}") from exc
        return resp.status_code, resp.json()

    def apply(self, text: str, content_type: str = "application/yaml") -> Any:
        """Apply one file's policies."""
        return self._call("POST", "/api/v1/policies", content=text.encode(), headers={"Content-Type": content_type})

    def delete(self, kind: str, name: str, namespace: str = "") -> Any:
        """Delete one policy."""
        params = {"namespace": namespace} if namespace else None
        return self._call("DELETE", f"/api/v1/policies/{kind}/{name}", params=params)

    def policies(self) -> Any:
        """Every policy with its status."""
        return self._call("GET", "/api/v1/policies")

    def alerts(self, **filters: Any) -> Any:
        """Alerts, newest first."""
        return self._call("GET", "/api/v1/alerts", params={k: v for k, v in filters.items() if v is not None})
