"""fracture-gateway: gateway."""
