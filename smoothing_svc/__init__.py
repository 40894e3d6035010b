"""smoothing_svc package."""
