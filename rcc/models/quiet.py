"""Keep library chatter (load reports, download progress bars) out of rcc's output."""

import logging


def quiet_libraries() -> None:
    """Silence transformers' load reports / progress bars and open_clip's info warnings."""
    # torchao (imported by transformers' model classes) registers enums through a deprecated torch
    # API, and torch logs a warning per enum straight to stderr: noise in every one-line error.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # open_clip warns "model initialized randomly" for every architecture-only build we do on purpose.
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
