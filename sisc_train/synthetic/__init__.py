"""The embedded generated datasets: shapes scenes with captions of known relevance, and VQA / NLVR task data."""
