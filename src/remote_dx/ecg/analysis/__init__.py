"""Preliminary (machine) ECG analysis: quality, beats, median beat, global intervals, axis, ST,
rhythm, critical values and bilingual statements. Entry point:
:func:`remote_dx.ecg.analysis.analyze.analyze`.

The package itself imports nothing heavy: the analysis needs neurokit2 and SciPy (~3 s to import,
~100 MB), which the API and the DICOM receiver never use; they only read its statements and
version. Workers import :mod:`.analyze` ahead of their first ECG (``ecg.service.preload_analysis``).
"""

#: Stored with every machine result, so a reading can be traced to the rules that produced it.
ALGORITHM_VERSION = "rdx-ecg 0.5.0"

__all__ = ["ALGORITHM_VERSION"]
