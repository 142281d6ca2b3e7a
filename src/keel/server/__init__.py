"""The ASGI app: the OpenAI-compatible API, the feature API and health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keel.gateway import Keel
from keel.server import (
    budgets,
    datasets,
    drift,
    errors,
    features,
    feedback,
    keys,
    observability,
    openai_compat,
    openapi,
    pages,
    reviews,
    rollouts,
    stats,
    versions,
)
from keel.server.access import is_loopback
from keel.server.auth import KeyAuth


async def _call_feature(request: Request) -> Response:
    return await features.call_feature(request.path_params["name"], request)


def create_app(keel: Keel) -> FastAPI:
    """Build the app around a Keel; the app's lifespan starts and closes it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await keel.start()
        try:
            yield
        finally:
            await keel.close()

    app = FastAPI(title="Keel", version="0.1.0", lifespan=lifespan,
                  description="The system around the model.")
    app.state.keel = keel
    errors.install(app)
    app.include_router(features.router)
    app.include_router(openai_compat.router)
    app.include_router(pages.router)
    app.include_router(reviews.router)
    app.include_router(versions.router)
    app.include_router(rollouts.router)
    app.include_router(datasets.router)
    app.include_router(drift.router)
    app.include_router(stats.router)
    app.include_router(budgets.router)
    app.include_router(observability.router)
    app.include_router(keys.router)
    feedback.install(app, keel)  # its routes, and the recent calls feedback may race
    openapi.install(app)  # the document completed: raw query params and bodies, auth
    # The hot routes are also served as plain Starlette routes ahead of FastAPI's, which
    # skips its per-request dependency machinery (~170 µs); the FastAPI routes stay for
    # the OpenAPI document. The handlers read and write raw bodies either way.
    app.router.routes[0:0] = [
        Route("/v1/chat/completions", openai_compat.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", openai_compat.embeddings, methods=["POST"]),
        Route("/v1/features/{name}", _call_feature, methods=["POST"]),
        Route("/metrics", observability.metrics, methods=["GET"]),  # Prometheus
    ]

    @app.get("/healthz", summary="Liveness, what is loaded, and the event store's state")
    async def healthz(request: Request) -> Response:
        # always 200 while the process serves; "degraded": the store is down or stalled
        # and events wait in memory or spill files (docs/resilience.md)
        store = keel.writer.health()
        return features.json_response({"status": "degraded" if store["degraded"] else "ok",
                                       "features": sorted(keel.features), "store": store})

    @app.get("/api/circuits", summary="Circuit breaker state per target (provider, model)")
    async def circuits(request: Request) -> Response:
        return features.json_response({"circuits": keel.circuits.snapshot()})

    # every request: its key, its role, its features (keel.server.access has the rules)
    settings = keel.settings
    app.add_middleware(KeyAuth, store=keel.store, keys=settings.api_keys,
                       open_ok=is_loopback(settings.host) or settings.insecure_no_auth)
    return app
