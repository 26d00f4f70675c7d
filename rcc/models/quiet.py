"""Keep library chatter (load reports, download progress bars) out of rcc's output."""

import logging


def quiet_libraries() -> None:
    """Silence transformers' load reports / progress bars and open_clip's info warnings."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # open_clip warns "model initialized randomly" for every architecture-only build we do on purpose.
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
