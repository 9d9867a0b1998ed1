"""The dashboard's tabs, one module each, in the order `app.dashboard_data.TABS` names them; `app/dashboard.py`
(the entry `streamlit run` starts) lays them out. Not named `pages/`: beside the entry script Streamlit would turn
that folder into a multipage app."""

from __future__ import annotations

from .confusion import confusion_tab
from .embeddings import embeddings_tab
from .evaluations import evaluations_tab
from .overview import overview_tab
from .roc import roc_tab
from .training import training_tab

__all__ = ["overview_tab", "evaluations_tab", "training_tab", "roc_tab", "confusion_tab", "embeddings_tab"]
