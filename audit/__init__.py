"""The audit trail: its vocabulary, its events, the DICOM audit message and its delivery to a
syslog collector."""
