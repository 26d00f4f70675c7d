"""rcc_tui: the Textual workbench, a thin view over rcc.session (arrives with the app issue)."""
