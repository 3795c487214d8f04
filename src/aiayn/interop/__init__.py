"""Models from elsewhere and to elsewhere: Hugging Face Marian and GPT-2 (`hf`), `import_model` (`aiayn import`),
`export_model` (`aiayn export`).

The names are loaded on first use: importing aiayn.interop pulls in neither transformers nor sentencepiece.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_model", "import_model"]


def __getattr__(name: str) -> Any:
    if name == "import_model":
        from aiayn.interop.importer import import_model

        return import_model
    if name == "export_model":
        from aiayn.interop.exporter import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
