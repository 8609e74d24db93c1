"""The shoprec business dashboard (Streamlit): ``streamlit run dashboard/app.py`` or ``shoprec dashboard``."""
