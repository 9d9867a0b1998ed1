"""Import gradio without re-deriving its components' type stubs: about 2 s of the app's cold start on 2 cores.

Every `import gradio` runs `gradio.component_meta.create_or_modify_pyi` for each of its ~80 component classes: it
parses the class's source file, renders the class's `.pyi` stub from it and rewrites the stub in site-packages
when it differs. That is for people developing custom components (their IDE sees the event methods); the wheel
ships the stubs already (gradio-app/gradio#13799), and a server never needs them. Skipping it takes gradio's
import from 4.0-4.3 s to 2.1-2.4 s here (bench/README.md, "Cold start").

:func:`skip_stub_regeneration` installs a one-shot hook (`model_pkg.lazy.AfterImport`) that, right after that one
module has run, makes the stub step a no-op; everything else gradio does is unchanged. Call it before gradio is
first imported (once it is, the components exist and there is nothing left to skip). If a later gradio renames
the function, nothing is replaced and gradio imports as it always did.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from model_pkg.lazy import AfterImport

STUB_MODULE = "gradio.component_meta"
STUB_FUNCTION = "create_or_modify_pyi"

__all__ = ["STUB_FUNCTION", "STUB_MODULE", "skip_stub_regeneration"]


def _keep_shipped_stub(*args: Any, **kwargs: Any) -> None:
    """Stands in for gradio's stub writer: the stubs that came with the wheel stay as they are."""
    return None


def _replace_stub_step(module: ModuleType) -> None:
    _HOOK.uninstall()
    if callable(getattr(module, STUB_FUNCTION, None)):
        setattr(module, STUB_FUNCTION, _keep_shipped_stub)


_HOOK = AfterImport([STUB_MODULE], _replace_stub_step)


def skip_stub_regeneration() -> bool:
    """Make the coming `import gradio` skip the stub step; -> False when gradio is imported already (too late)."""
    if STUB_MODULE in sys.modules:
        return False
    _HOOK.install()
    return True
