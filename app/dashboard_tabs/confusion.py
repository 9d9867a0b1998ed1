"""The Gallery confusion tab: the confusion matrix as a heatmap with the counts, and the most confused dogs as
photo pairs side by side with the similarity of their closest photos."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app import dashboard_data as data

from .loaders import cached_confusion, found_files, mtime, photo_embeddings, rel


def heatmap(matrix: pd.DataFrame, only_mistakes: bool) -> alt.Chart:
    cells = matrix.rename_axis(index="true", columns="decided").stack().rename("count").reset_index()
    cells = cells[cells["count"] > 0]
    order = list(matrix.index)
    if only_mistakes:
        wrong = cells[cells["true"] != cells["decided"]]
        involved = set(wrong["true"]) | set(wrong["decided"])
        cells = cells[cells["true"].isin(involved) & cells["decided"].isin(involved)]
        order = [d for d in order if d in involved]
    cells = cells.assign(kind=np.where(cells["true"] == cells["decided"], "right", "mistake"))
    size = min(760, max(300, 6 * len(order)))
    return (
        alt.Chart(cells)
        .mark_rect()
        .encode(
            x=alt.X("decided:N", sort=order, title="decided (a dog, unknown or reshoot)", axis=alt.Axis(labels=len(order) <= 60)),
            y=alt.Y("true:N", sort=order, title="true dog", axis=alt.Axis(labels=len(order) <= 60)),
            color=alt.Color("count:Q", scale=alt.Scale(type="log", scheme="blues"), title="queries"),
            stroke=alt.condition("datum.kind == 'mistake'", alt.value("#c92a2a"), alt.value(None)),
            tooltip=["true", "decided", "count", "kind"],
        )
        .properties(width=size, height=size, title=f"{len(order)} x {len(order)} (empty cells are zero)")
    )


def show_photo(column, relative: str | None, data_root: Path, caption: str) -> bool:
    found = data.find_photo(relative, data_root) if relative else None
    if found is None:
        column.markdown(f"*{caption}*  \n(photo not found)")
        return False
    column.image(str(found), caption=caption, width=150)
    return True


def confusion_tab(root: Path, data_root: Path) -> None:
    files = found_files(str(root), "*confusion*.csv")
    if not files:
        st.info("No gallery confusion matrix (a *confusion*.csv: `python -m model_pkg.evaluate gallery ... --confusion PREFIX`).")
        return
    names = [rel(f, root) for f in files]
    default = next((i for i, n in enumerate(names) if "arcface" in n), 0)
    choice = st.selectbox("Confusion matrix", names, index=default)
    path = root / choice
    matrix = cached_confusion(str(path), mtime(path))
    dogs = [d for d in matrix.index if d not in data.DECISIONS and d in matrix.columns]
    known = matrix.loc[dogs]
    right = int(sum(known.at[d, d] for d in dogs))
    columns = st.columns(4)
    columns[0].metric("queries of registered dogs", int(known.to_numpy().sum()))
    columns[1].metric("identified right", f"{right / max(int(known.to_numpy().sum()), 1):.1%}")
    columns[2].metric("taken for another dog", int(known[dogs].to_numpy().sum()) - right)
    columns[3].metric("rejected (unknown / reshoot)", int(known[[c for c in data.DECISIONS if c in known]].to_numpy().sum()))
    st.caption(
        f"Rows: the true dog ({len(dogs)} registered dogs, then 'unknown' for every query of an unregistered dog); "
        "columns: the gallery's decision at its thresholds. Red outlines are mistakes; hover a cell for the dogs."
    )
    only = st.toggle("Only dogs involved in a mistake", value=len(dogs) > 40)
    st.altair_chart(heatmap(matrix, only), width="content")
    png = path.with_suffix(".png")
    if png.is_file():
        with st.expander("The PNG that `evaluate gallery` drew"):
            st.image(str(png), width=700)

    st.subheader("Most confused dogs")
    pairs = data.confusion_pairs(matrix)
    if pairs.empty:
        st.success("No dog was taken for another one.")
        return
    emb = photo_embeddings(root)
    accept = data.gallery_score_threshold(root)
    if emb is not None and accept is not None:
        st.caption(f"For scale: the shipped gallery accepts a match from a similarity of {accept:.3f} (its stored threshold).")
    shown = st.slider("Pairs shown", 1, min(len(pairs), 20), min(len(pairs), 6)) if len(pairs) > 1 else 1
    if emb is None:
        st.info("No saved embeddings with photo paths (scripts/save_test_embeddings.py): similarities and photos are not shown.")
    missing_photos = False
    for row in pairs.head(shown).itertuples(index=False):
        a, b, ab, ba, total = row
        close = data.closest_photos(emb, a, b) if emb is not None else None
        photo_a, photo_b, text = st.columns([1, 1, 2])
        ok_a = show_photo(photo_a, close and close["photo a"], data_root, f"dog {a}")
        ok_b = show_photo(photo_b, close and close["photo b"], data_root, f"dog {b}")
        missing_photos |= close is not None and not (ok_a and ok_b)
        lines = [f"**dog {a} and dog {b}**: {total} mistake{'s' * (total != 1)} ({a} taken for {b}: {ab}, {b} for {a}: {ba})"]
        if close is not None:
            lines.append(
                f"similarity of their closest photos (shown): **{close['similarity']:.3f}**; mean over all their photo "
                f"pairs {close['mean similarity']:.3f} ({emb.model or 'saved embeddings'})"
            )
        elif emb is not None:
            lines.append("(no saved embeddings of these dogs)")
        text.markdown("  \n".join(lines))
    if missing_photos:
        st.info(f"Photos not found under {data_root}: set PETMATCH_DATA (or `-- --data DIR`) to the folder holding dogfacenet/.")
    with st.expander("All confused pairs"):
        st.dataframe(pairs, hide_index=True)
