"""Publishing a trained checkpoint: its model card and the Hub upload."""
