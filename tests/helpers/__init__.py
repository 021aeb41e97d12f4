"""Reusable test fixtures that run real external programs (dcmtk, Orthanc)."""
