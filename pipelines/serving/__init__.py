"""Serving: the trained model behind explained top-K lists, a precomputed store, and the HTTP API.

``from pipelines.serving import ServingModel`` is cheap: the API (FastAPI), Redis and TensorFlow load only
where they are used.
"""

from __future__ import annotations

from pipelines.serving.model import Recommendation, Rules, ServingModel, UnknownCategory, UnknownItem

__all__ = ["Recommendation", "Rules", "ServingModel", "UnknownCategory", "UnknownItem"]
