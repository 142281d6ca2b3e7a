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
    observability,
    openai_compat,
    pages,
    reviews,
    rollouts,
    stats,
    versions,
)
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
    # The hot routes are also served as plain Starlette routes ahead of FastAPI's, which
    # skips its per-request dependency machinery (~170 µs); the FastAPI routes stay for
    # the OpenAPI document. The handlers read and write raw bodies either way.
    app.router.routes[0:0] = [
        Route("/v1/chat/completions", openai_compat.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", openai_compat.embeddings, methods=["POST"]),
        Route("/v1/features/{name}", _call_feature, methods=["POST"]),
        Route("/metrics", observability.metrics, methods=["GET"]),  # Prometheus
    ]

    @app.get("/healthz", summary="Liveness and what is loaded")
    async def healthz(request: Request) -> Response:
        return features.json_response({"status": "ok", "features": sorted(keel.features)})

    @app.get("/api/circuits", summary="Circuit breaker state per target (provider, model)")
    async def circuits(request: Request) -> Response:
        return features.json_response({"circuits": keel.circuits.snapshot()})

    if keel.settings.api_keys:
        app.add_middleware(KeyAuth, keys=keel.settings.api_keys)
    return app
