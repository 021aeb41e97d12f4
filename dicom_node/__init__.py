"""fracture-gateway: dicom_node."""
