"""fracture-gateway: reporting."""
