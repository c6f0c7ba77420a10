"""Where imd's data directories are: ``sql/`` (schema files), ``web/``
(the test page) and ``sdk`` (the JavaScript SDK's built ES modules, which
the page imports).

In a checkout ``sql/`` and ``web/`` sit at the top, beside ``imd/``, and the
SDK's modules in ``clients/js/dist/`` once built (``make sdk``).  The wheel
maps them into the package (``setup.cfg``: ``package_dir``), so an installed
imd has them as ``imd/sql``, ``imd/web`` and ``imd/sdk``.  This is the one
place that knows both.
"""

import importlib.resources
import os
from typing import cast

import imd

# name -> where it is in a checkout (the installed package has it as imd/<name>)
_CHECKOUT_PATHS = {"sql": ("sql",), "web": ("web",), "sdk": ("clients", "js", "dist")}
DATA_DIRECTORIES = tuple(_CHECKOUT_PATHS)


def data_dir(name: str) -> str:
    """The path of data directory ``name`` (``"sql"``, ``"web"`` or
    ``"sdk"``): the installed package's copy, else the checkout's;
    FileNotFoundError when neither exists (``sdk`` before ``make sdk``)."""
    if name not in DATA_DIRECTORIES:
        raise ValueError("not an imd data directory: %r" % (name,))
    # imd is installed unzipped (zip_safe = False): files() is a real directory
    # (typeshed's Traversable is not PathLike; the directory's Path is)
    installed = os.fspath(cast("os.PathLike[str]", importlib.resources.files(imd).joinpath(name)))
    if os.path.isdir(installed):
        return installed
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(imd.__file__))), *_CHECKOUT_PATHS[name])
    if os.path.isdir(checkout):
        return checkout
    raise FileNotFoundError("imd's %s/ directory is neither at %s nor at %s" % (name, installed, checkout))
