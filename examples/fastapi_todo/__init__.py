"""A FastAPI app with its own login, and optisync's sync endpoint mounted at ``/sync``.

``app.py`` is the server side (a web app that issues JWTs and serves sync),
``lists.py`` the device side (a store with one user's list and a shared
one). ``python -m examples.fastapi_todo`` runs both: see ``docs/fastapi.md``.
"""
