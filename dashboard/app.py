"""Entry point of the dashboard: ``streamlit run dashboard/app.py`` from the repo root, or ``shoprec dashboard``.

Streamlit puts only this file's directory on ``sys.path``; the directory above it is added so that
``import dashboard`` works from a source checkout whether or not the installed package maps it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

_PARENT = str(Path(__file__).resolve().parents[1])
if _PARENT not in sys.path:
    sys.path.insert(0, _PARENT)

from dashboard import ui  # noqa: E402  (needs the path above)

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", url_path="overview", default=True),
    st.Page("pages/models.py", title="Models", icon=":material/model_training:", url_path="models"),
    st.Page("pages/gate.py", title="Deployment gate", icon=":material/verified:", url_path="gate"),
    st.Page("pages/data_quality.py", title="Data quality", icon=":material/fact_check:", url_path="data-quality"),
    st.Page("pages/recommendations.py", title="Recommendations explorer", icon=":material/person_search:",
            url_path="recommendations"),
    st.Page("pages/items.py", title="Item explorer", icon=":material/inventory_2:", url_path="items"),
    st.Page("pages/experiments.py", title="Experiments", icon=":material/science:", url_path="experiments"),
]

# business users get no developer menu or deploy button; a session reads this when it starts, so under a plain
# `streamlit run` it applies from the second session on (`shoprec dashboard` also sets it on the command line)
st.set_option("client.toolbarMode", "viewer")
st.set_page_config(page_title="shoprec dashboard", page_icon=":material/storefront:", layout="wide")
page = st.navigation(PAGES)
with st.sidebar:
    st.caption(f"Project: `{ui.root()}`")
    if st.button("Refresh data", icon=":material/refresh:", help=f"Reads are cached for {ui.TTL_S} s"):
        st.cache_data.clear()
page.run()
