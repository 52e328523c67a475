"""The Gradio app: thin views over engine snapshots and results (no training logic here)."""
