"""dagtask's optional REST API (``pip install 'dagtask[api]'``): OCP's task API over HTTP.

:func:`create_app` builds a FastAPI application around an :class:`~dagtask.Engine`;
:func:`create_api_router` gives just the endpoints for an application of your own; ``dagtask
serve`` runs the application on uvicorn (:func:`dagtask.api.server.serve`). See docs/api.md.
"""

from __future__ import annotations

from dagtask.api.app import ApiSettings, create_api_router, create_app
from dagtask.api.limits import RateLimit

__all__ = ["ApiSettings", "RateLimit", "create_api_router", "create_app"]
