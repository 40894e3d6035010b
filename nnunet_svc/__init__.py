"""nnunet_svc package."""
