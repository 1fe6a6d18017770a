"""Imaging: pixel decoding for every transfer syntax pydicom + pylibjpeg can read, windowing,
previews."""
