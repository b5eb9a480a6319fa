"""comfyui-rad's version: the package's ``__version__``, and the ``created_by`` its files and results record."""

__version__ = "0.1.0"
CREATED_BY = f"comfyui-rad {__version__}"
