"""Tests of the Streamlit dashboard: every page through AppTest, and the running app in a real browser."""
