"""Case service: one case job from CT phases to mask, meshes, measurements and report."""
