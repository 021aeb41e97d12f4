"""fracture-gateway: config."""
