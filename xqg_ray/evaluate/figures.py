"""One way a matplotlib figure becomes the PNG bytes the run root stores (so every plot of the
evaluation and the report has the same size and resolution, and no figure stays open)."""

from __future__ import annotations

import io
from typing import Any


def png_bytes(fig: Any) -> bytes:
    """The figure laid out, rendered at 110 dpi and closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
