"""Regenerate the key tables of docs/configuration.md from the config model.

    PYTHONPATH=src python scripts/gen_config_docs.py

Everything above the first ``## [`` heading (the hand-written introduction) is kept.
"""

from pathlib import Path

from skymosaic.config import config_reference_markdown

path = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
text = path.read_text()
head = text[: text.index("## [input]")]
path.write_text(head + config_reference_markdown())
