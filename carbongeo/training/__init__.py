"""Training machinery: the cube dataset and input normalisation."""
