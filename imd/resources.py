"""Where imd's data directories are: ``sql/`` (schema files) and ``web/``
(the test page).

In a checkout they sit at the top, beside ``imd/``.  The wheel maps them
into the package (``setup.cfg``: ``package_dir``), so an installed imd has
them as ``imd/sql`` and ``imd/web``.  This is the one place that knows both.
"""

import importlib.resources
import os
from typing import cast

import imd

DATA_DIRECTORIES = ("sql", "web")


def data_dir(name: str) -> str:
    """The path of data directory ``name`` (``"sql"`` or ``"web"``): the
    installed package's copy, else the checkout's."""
    if name not in DATA_DIRECTORIES:
        raise ValueError("not an imd data directory: %r" % (name,))
    # imd is installed unzipped (zip_safe = False): files() is a real directory
    # (typeshed's Traversable is not PathLike; the directory's Path is)
    installed = os.fspath(cast("os.PathLike[str]", importlib.resources.files(imd).joinpath(name)))
    if os.path.isdir(installed):
        return installed
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(imd.__file__))), name)
    if os.path.isdir(checkout):
        return checkout
    raise FileNotFoundError("imd's %s/ directory is neither at %s nor at %s" % (name, installed, checkout))
