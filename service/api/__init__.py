"""The HTTP API: app factory and lifespan, dependencies, schemas, routes, the forecast service."""
