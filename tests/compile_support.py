"""What the compile tests share: the `graphs` fixture (import it into a test module to use it) and the log line
of settled steps skipping guards."""

from __future__ import annotations

import pytest
import torch

from lib_copylora.train import speedups

SKIP_LINE = "compile: after 3 steps in a row, dynamo checks only the guards that tell its graphs apart (skip_guards)"


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
