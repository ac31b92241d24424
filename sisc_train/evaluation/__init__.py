"""Evaluation: image-text retrieval (ITC ranking, ITM re-ranking), VQA and NLVR, and their metrics."""
