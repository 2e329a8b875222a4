"""Shared pieces of the HuggingFace tests (skipped when transformers is not installed)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
