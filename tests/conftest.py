"""Test-wide settings: never touch the network, keep caches in temporary folders."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# Nothing a test does may reach the real data home (~/.local/share/rcc-tui: sessions and the
# shared store): module-scoped fixtures run before the per-test fixture below, so this is set first.
os.environ["RCC_DATA_HOME"] = tempfile.mkdtemp(prefix="rcc-test-data-home-")
atexit.register(shutil.rmtree, os.environ["RCC_DATA_HOME"], True)

import pytest  # noqa: E402

# The app's Pilot fixtures (demo_session, session_dir, a private sessions home): tests/tui_pilot.py.
pytest_plugins = ["tui_pilot"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Every test gets its own feature cache, so a cached result can never hide a bug, and its own
    # data home, so sessions of different tests never share blobs (a test that corrupts one of its
    # blobs must not corrupt another test's session through the shared store's hard links).
    monkeypatch.setenv("RCC_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))
    monkeypatch.setenv("RCC_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))


@pytest.fixture(scope="session")
def rcc_mini():
    """The built-in demo model with its shipped weights (loaded once per test session)."""
    from rcc.models.registry import load_model

    return load_model("rcc-mini", device="cpu")


@pytest.fixture
def one_thread():
    """Tiny linear algebra runs faster and steadier on one thread when the machine is loaded."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread_module():
    """One thread for a whole module: module-scoped fixtures built under it replay exactly in its tests."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    """A tiny OpenCLIP config file (tests/openclip_tiny.py), loadable as ``open_clip:PATH``."""
    import json

    from openclip_tiny import TINY_OPEN_CLIP_CONFIG

    path = tmp_path_factory.mktemp("openclip") / "tiny.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    return path


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory):
    """``open_clip:CONFIG@WEIGHTS`` of the tiny OpenCLIP model with fixed (seeded random) weights.

    Loading it twice gives the same model, so sessions on it can be reopened and replayed;
    both files live in one folder (``Path(spec.split("@")[1]).parent``), usable as a data root.
    """
    import json

    import torch
    from openclip_tiny import TINY_OPEN_CLIP_CONFIG
    from safetensors.torch import save_file

    from rcc.models.registry import load_model

    folder = tmp_path_factory.mktemp("tiny-model")
    config = folder / "tiny.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    torch.manual_seed(0)
    model = load_model(f"open_clip:{config}", device="cpu")
    weights = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.module.state_dict().items()}, str(weights))
    return f"open_clip:{config}@{weights}"
