"""fracture-gateway: db."""
