"""The build: pyproject.toml holds the project; this file only adds the compiled modules.

The per-call path (HTTP/2 and Bolt endpoints, the call core, the per-call log lines) is compiled to C with mypyc
from these same type-annotated sources: the same behaviour, about a third less CPU per call (bench/README.md:
The compiled build against the Python sources). Set INTERLINK_PURE=1 when installing to skip it (pure Python,
e.g. on a machine without a C compiler); at run time INTERLINK_PURE=1 makes a compiled install load the sources
instead (interlink/_build.py).
"""

import importlib.util
import os

from setuptools import setup

# The list of modules, from interlink/_build.py (loaded alone: the package and its dependencies are not importable
# in the build's environment).
_spec = importlib.util.spec_from_file_location("_interlink_build", os.path.join(os.path.dirname(__file__) or ".",
                                                                              "interlink", "_build.py"))
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)

ext_modules = []
if not _build.pure():
    from mypyc.build import mypycify

    ext_modules = mypycify(["--ignore-missing-imports", "--follow-imports=silent", *_build.COMPILED],
                           opt_level="3", debug_level="1")
else:  # a compiled module left from an earlier build would be imported before its source
    for source in _build.COMPILED:
        built = _build.compiled_module(source)
        if built is not None:
            os.remove(built)

setup(ext_modules=ext_modules)
