"""xqg-ray: cross-lingual query generation (xQG) for dense retrieval, at corpus scale on Ray."""

__version__ = "0.1.0"
