"""Data loading: image-caption pairs and task data in the formats people have, collators, skip counting."""
