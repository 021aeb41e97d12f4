"""fracture-gateway: api."""
