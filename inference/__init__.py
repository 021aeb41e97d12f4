"""fracture-gateway: inference."""
