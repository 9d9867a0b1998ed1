"""The Embeddings tab: a PCA / t-SNE map of saved embeddings, coloured by dog, the photo on hover."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app import dashboard_data as data

from .loaders import cached_embeddings, cached_projection, cached_thumbnail, embeddings_files, mtime, rel


def embeddings_tab(root: Path, data_root: Path) -> None:
    files = embeddings_files(root)
    if not files:
        st.info(
            "No saved embeddings: an .npz with 'embeddings' (or 'features') and 'labels' (or 'paths'), "
            "e.g. `python scripts/save_test_embeddings.py`."
        )
        return
    left, middle, right = st.columns([2, 1, 2])
    choice = left.selectbox("Embeddings", [rel(f, root) for f in files])
    method = middle.radio("Projection", ["t-SNE", "PCA"], horizontal=True)
    path = root / choice
    try:
        emb = cached_embeddings(str(path), mtime(path))
    except ValueError as err:
        st.error(f"Cannot read {choice}: {err}")
        return
    identities, counts = np.unique(emb.labels, return_counts=True)
    ranked = identities[np.argsort(-counts, kind="stable")]
    most = len(identities)
    if most > 1:
        most = right.slider("Dogs shown (most photos first)", 1, most, min(most, 15))
    dogs = tuple(sorted(ranked[:most]))
    keep = np.isin(emb.labels, dogs)
    try:
        points = cached_projection(str(path), mtime(path), dogs, method)
    except ValueError as err:
        st.error(str(err))
        return
    frame = pd.DataFrame({"x": points[:, 0], "y": points[:, 1], "dog": emb.labels[keep]})
    tooltip = ["dog"]
    if emb.paths is not None:
        frame["photo"] = emb.paths[keep]
        found = [data.find_photo(p, data_root) for p in frame["photo"]]
        if any(found):
            # vega-tooltip shows a field named "image" as a picture
            frame["image"] = [cached_thumbnail(str(f)) if f is not None else None for f in found]
            tooltip = ["image", "dog", "photo"]
        else:
            tooltip = ["dog", "photo"]
    chart = (
        alt.Chart(frame)
        .mark_circle(size=70, opacity=0.85)
        .encode(
            x=alt.X("x:Q", title=f"{method} 1", axis=alt.Axis(labels=False)),
            y=alt.Y("y:Q", title=f"{method} 2", axis=alt.Axis(labels=False)),
            color=alt.Color("dog:N", scale=alt.Scale(scheme="category20"), legend=alt.Legend(columns=2) if most <= 20 else None),
            tooltip=tooltip,
        )
        .properties(height=560)
    )
    st.altair_chart(chart, width="stretch")
    caption = f"{int(keep.sum())} of {len(emb.labels)} embeddings, {most} of {len(identities)} identities"
    if emb.model:
        caption += f", {emb.model}"
    st.caption(caption + ". Each point is a photo; photos of one dog should sit together. Hover a point for the photo.")
    if emb.paths is not None and "image" not in frame:
        st.info(f"Photos not found under {data_root}: set PETMATCH_DATA (or `-- --data DIR`) to see them on hover.")
