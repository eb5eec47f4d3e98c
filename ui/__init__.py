"""Streamlit-side helpers shared by app.py and pages/ (mtl_core never imports this)."""
