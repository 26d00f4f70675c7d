"""Test-wide settings: never touch the network, keep caches in temporary folders."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Every test gets its own feature cache, so a cached result can never hide a bug.
    monkeypatch.setenv("RCC_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))


@pytest.fixture(scope="session")
def rcc_mini():
    """The built-in demo model with its shipped weights (loaded once per test session)."""
    from rcc.models.registry import load_model

    return load_model("rcc-mini", device="cpu")
