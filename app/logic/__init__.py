"""The app's decisions, Streamlit-free."""
