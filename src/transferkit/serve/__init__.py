"""``transferkit serve``: an HTTP prediction service (FastAPI + uvicorn,
``pip install transferkit[serve]``) for a model folder or an exported ``.onnx`` file.

:func:`create_app` builds the application (:mod:`transferkit.serve.app`); the models
behind it share one interface (:mod:`transferkit.serve.predictors`), and concurrent
requests are batched together (:mod:`transferkit.serve.batching`).
"""

from transferkit.serve.app import create_app

__all__ = ["create_app"]
