"""Ray Serve search service: a router ingress, FAISS shard groups, the query encoder.

Importing this package does not import Ray; `xqg_ray.serve.app` does.
"""

from xqg_ray.serve.client import SearchClient, ServiceError, search_cli
from xqg_ray.serve.config import Limits, ServeConfig

__all__ = ["Limits", "SearchClient", "ServeConfig", "ServiceError", "search_cli"]
