"""verifyd: the GPU-side daemon that verifies edge clients' drafts with the full target model."""
