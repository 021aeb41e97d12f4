"""The audit trail's vocabulary, the DICOM audit message and its delivery to a syslog collector."""
