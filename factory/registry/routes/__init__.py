"""The registry's HTTP routes, one router per resource; :func:`factory.registry.app.create_app` mounts them.

These modules do not use ``from __future__ import annotations``: FastAPI reads the route functions'
annotations at run time, and they name dependencies that are local to each ``router()``.
"""
