"""fracture-gateway: training."""
