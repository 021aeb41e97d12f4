"""fracture-gateway: pipeline."""
