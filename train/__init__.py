"""The shared training loop and everything one run writes."""
