"""postprocess_svc package."""
