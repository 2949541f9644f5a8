"""jpegweights model server: FastAPI app over the codec.

>>> from jpegweights.service import Settings, create_app
>>> app = create_app(Settings(model_dir="models"))
"""

__version__ = "0.1.0"

from .app import create_app  # noqa: E402
from .settings import Settings  # noqa: E402

__all__ = ["Settings", "__version__", "create_app"]
