"""The whole study in one call (audit/audit.py), its verdicts and document (audit/verdicts.py), its HTML report
(audit/report.py)."""
