"""The petmatch apps: `app.py` (Gradio), `dashboard.py` (Streamlit), `build_demo_assets.py`."""
