"""Results that travel (结果互认): a signed report as PDF, as DICOM (Encapsulated PDF, SR) sent
back to the township by C-STORE, and as an HL7 FHIR R4 DiagnosticReport.

Every exporter works from one :class:`~remote_dx.reporting.export.view.SignedReportView`, so the
PDF, the DICOM objects and the FHIR resource always say the same thing.
"""
