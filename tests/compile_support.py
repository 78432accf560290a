"""The `graphs` fixture of the compile tests: import it into a test module to use it."""

from __future__ import annotations

import pytest
import torch

from lib_copylora.train import speedups


@pytest.fixture
def graphs(monkeypatch) -> list:
    """The graphs dynamo hands to the compile backend, which runs each as traced; dynamo's caches start empty."""
    handed = []

    def counting_backend(graph, example_inputs):
        handed.append(graph)
        return graph.forward

    torch._dynamo.reset()
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", counting_backend)
    yield handed
    torch._dynamo.reset()
