"""Packaging beyond what pyproject.toml can say (everything else is there).

The built-in themes live in ``themes/`` at the top of the repository, beside the code rather than
inside it, so a user can read and copy them; a wheel installs that folder as the data-only package
``rcc_tui.builtin_themes`` (rcc_tui/themes.py finds either place).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["rcc", "rcc.*", "rcc_tui", "rcc_tui.*"]), "rcc_tui.builtin_themes"],
    package_dir={"rcc_tui.builtin_themes": "themes"},
)
