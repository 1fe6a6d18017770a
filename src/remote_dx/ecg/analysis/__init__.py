"""Preliminary (machine) ECG analysis: quality, beats, median beat, global intervals, axis, ST,
rhythm, critical values and bilingual statements. Entry point: :func:`analyze`."""

from remote_dx.ecg.analysis.analyze import ALGORITHM_VERSION, ECGAnalysis, analyze

__all__ = ["ALGORITHM_VERSION", "ECGAnalysis", "analyze"]
