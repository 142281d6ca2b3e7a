"""The control plane: what Keel learns and decides between calls. The hot path never imports it."""
