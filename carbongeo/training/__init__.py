"""Training machinery: data, normalisation, setup, the loop, distribution and interruption."""
