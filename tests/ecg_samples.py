"""Synthetic ECGs and schema-faithful vendor files built from them, for the ECG reader tests.

No Philips Sierra or GE MUSE sample exists on disk, so these writers produce them from a known
signal: Philips ``restingecgdata`` 1.04 with XLI-compressed or uncompressed ``parsedwaveforms``
(the XLI encoder below is the inverse of the decoder in the ``sierraecg`` package: 10-bit LZW,
high/low byte planes, second-difference residuals, limb leads III/aVR/aVL/aVF stored as residuals
against I and II), and GE MUSE ``RestingECG`` with 8 base64 leads.
"""

from __future__ import annotations

import base64

import numpy as np

from remote_dx.ecg.model import ECG, PatientInfo

EIGHT = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
TWELVE = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def synthetic_ecg(seconds: float = 10.0, rate: float = 500.0, hr: float = 72.0) -> ECG:
    """A plausible 12-lead ECG in mV (Gaussian P, QRS, T per lead; limb leads consistent)."""
    t = np.arange(int(seconds * rate)) / rate
    period = 60.0 / hr
    phase = t % period

    def wave(centre: float, width: float, height: float) -> np.ndarray:
        return height * np.exp(-0.5 * ((phase - centre) / width) ** 2)

    def beat(p: float, q: float, r: float, s: float, tw: float) -> np.ndarray:
        return (
            wave(0.10, 0.020, p)
            + wave(0.23, 0.008, q)
            + wave(0.25, 0.010, r)
            + wave(0.27, 0.008, s)
            + wave(0.50, 0.040, tw)
        )

    lead_i = beat(0.08, -0.05, 0.8, -0.10, 0.20)
    lead_ii = beat(0.12, -0.08, 1.2, -0.20, 0.30)
    leads = {"I": lead_i, "II": lead_ii}
    for k, name in enumerate(("V1", "V2", "V3", "V4", "V5", "V6")):
        leads[name] = beat(0.05, -0.1, 0.3 + 0.25 * k, -(1.0 - 0.15 * k), 0.1 + 0.05 * k)
    ecg = ECG(
        leads={n: v.astype(np.float32) for n, v in leads.items()},
        sampling_rate=rate,
        patient=PatientInfo(patient_id="T-001", name="TEST^ECG", sex="F"),
        source_format="synthetic",
    )
    return ecg.complete_limb_leads().ordered()


# --- Philips Sierra XML -------------------------------------------------------------------------


def _lzw_encode(data: bytes, bits: int = 10) -> bytes:
    max_code = (1 << bits) - 2  # the decoder's last usable code
    table = {bytes([i]): i for i in range(256)}
    next_code = 256
    codes: list[int] = []
    word = b""
    for byte in data:
        candidate = word + bytes([byte])
        if candidate in table:
            word = candidate
            continue
        codes.append(table[word])
        if next_code <= max_code:
            table[candidate] = next_code
            next_code += 1
        word = bytes([byte])
    if word:
        codes.append(table[word])
    out = bytearray()
    buffer = 0
    count = 0
    for code in codes:  # MSB first, as LzwDecoder reads
        buffer = (buffer << bits) | code
        count += bits
        while count >= 8:
            count -= 8
            out.append((buffer >> count) & 0xFF)
    if count:
        out.append((buffer << (8 - count)) & 0xFF)
    return bytes(out)


def _xli_chunk(samples: np.ndarray) -> bytes:
    s = [int(v) for v in samples]
    n = len(s)
    stored = [0] * n
    stored[0], stored[1] = s[0], s[1]
    first = 2 * s[1] - s[0] - s[2]
    for j in range(2, n - 1):
        stored[j] = 2 * s[j] - s[j - 1] - s[j + 1] + 64
    stored[n - 1] = 0
    words = np.array(stored, dtype=np.int64) & 0xFFFF
    planes = bytes(int(w) >> 8 for w in words) + bytes(int(w) & 0xFF for w in words)
    body = _lzw_encode(planes)
    header = len(body).to_bytes(4, "little", signed=True) + b"\x00\x00"
    header += first.to_bytes(2, "little", signed=True)
    return header + body


def _sierra_residuals(counts: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Lead order I..V6 with III, aVR, aVL, aVF as sierraecg expects them (residuals)."""
    i, ii = counts["I"].astype(np.int64), counts["II"].astype(np.int64)
    iii, avr, avl, avf = (counts[n].astype(np.int64) for n in ("III", "aVR", "aVL", "aVF"))
    stored = {
        "III": ii - i - iii,
        "aVR": -avr - np.floor_divide(i + ii, 2),
        "aVL": np.floor_divide(i - iii, 2) - avl,
        "aVF": np.floor_divide(ii + iii, 2) - avf,
    }
    return [stored.get(name, counts[name].astype(np.int64)) for name in TWELVE]


def sierra_xml(ecg: ECG, *, compression: str = "XLI", uv_per_bit: float = 5.0) -> bytes:
    rate = int(ecg.sampling_rate)
    counts = {n: np.rint(ecg.leads[n] * 1000 / uv_per_bit).astype(np.int16) for n in TWELVE}
    duration_ms = round(ecg.n_samples * 1000 / rate)
    if compression == "XLI":
        payload = b"".join(_xli_chunk(lead) for lead in _sierra_residuals(counts))
        attrs = 'compression="XLI"'
    else:
        payload = b"".join(counts[n].astype("<i2").tobytes() for n in TWELVE)
        attrs = 'compression="Uncompressed"'
    text = base64.b64encode(payload).decode("ascii")
    lines = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    return f"""<?xml version="1.0" encoding="utf-8"?>
<restingecgdata xmlns="http://www3.medical.philips.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <documentinfo>
    <documentname>ECG_T-001.xml</documentname>
    <documenttype>PhilipsECG</documenttype>
    <documentversion>1.04</documentversion>
  </documentinfo>
  <patient>
    <generalpatientdata>
      <patientid>T-001</patientid>
      <name><lastname>TEST</lastname><firstname>ECG</firstname></name>
      <age><years>58</years></age>
      <sex>Female</sex>
    </generalpatientdata>
  </patient>
  <dataacquisition date="2024-05-06" time="08:15:30">
    <machine machineid="1">PageWriter TC30</machine>
    <signalcharacteristics>
      <samplingrate>{rate}</samplingrate>
      <resolution>{uv_per_bit:g}</resolution>
      <acsetting>50</acsetting>
      <hipass>0.05</hipass>
      <lowpass>150</lowpass>
      <signalresolution>{uv_per_bit:g}</signalresolution>
      <signaloffset>0</signaloffset>
      <signalsigned>yes</signalsigned>
      <acquisitiontype>STD-12</acquisitiontype>
      <bitspersample>16</bitspersample>
      <numberchannelsvalid>12</numberchannelsvalid>
      <numberchannelsallocated>12</numberchannelsallocated>
    </signalcharacteristics>
  </dataacquisition>
  <interpretations>
    <interpretation>
      <globalmeasurements>
        <heartrate>72</heartrate><pr>152</pr><qrsdur>88</qrsdur><qtint>380</qtint>
        <qtc>416</qtc><frontaxis>45</frontaxis>
      </globalmeasurements>
      <statement><leftstatement>Sinus rhythm</leftstatement><rightstatement/></statement>
    </interpretation>
  </interpretations>
  <waveforms>
    <parsedwaveforms durationperchannel="{duration_ms}" dataencoding="Base64" {attrs}
        numberofleads="12" leadlabels="{" ".join(TWELVE)}">
{lines}
    </parsedwaveforms>
  </waveforms>
</restingecgdata>
""".encode()


# --- GE MUSE XML --------------------------------------------------------------------------------


def muse_xml(ecg: ECG, *, uv_per_bit: float = 4.88, truncate_lead: str | None = None) -> bytes:
    rate = int(ecg.sampling_rate)
    blocks = []
    for name in EIGHT:
        counts = np.rint(ecg.leads[name] * 1000 / uv_per_bit).astype("<i2")
        data = base64.b64encode(counts.tobytes()).decode("ascii")
        if name == truncate_lead:
            data = data[: len(data) // 2]
        blocks.append(
            f"""    <LeadData>
      <LeadByteCountTotal>{counts.nbytes}</LeadByteCountTotal>
      <LeadTimeOffset>0</LeadTimeOffset>
      <LeadSampleCountTotal>{len(counts)}</LeadSampleCountTotal>
      <LeadAmplitudeUnitsPerBit>{uv_per_bit:g}</LeadAmplitudeUnitsPerBit>
      <LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>
      <LeadHighLimit>2147483647</LeadHighLimit>
      <LeadLowLimit>-2147483648</LeadLowLimit>
      <LeadID>{name}</LeadID>
      <LeadOffsetFirstSample>0</LeadOffsetFirstSample>
      <FirstSampleBaseline>0</FirstSampleBaseline>
      <LeadSampleSize>2</LeadSampleSize>
      <LeadOff>FALSE</LeadOff>
      <BaselineSway>FALSE</BaselineSway>
      <WaveFormData>{data}</WaveFormData>
    </LeadData>"""
        )
    leads = "\n".join(blocks)
    return f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<!DOCTYPE RestingECG SYSTEM "restecg.dtd">
<RestingECG>
  <MuseInfo><MuseVersion>8.0.2.10132</MuseVersion></MuseInfo>
  <PatientDemographics>
    <PatientID>T-001</PatientID>
    <PatientAge>58</PatientAge>
    <AgeUnits>YEARS</AgeUnits>
    <DateofBirth>03-14-1966</DateofBirth>
    <Gender>FEMALE</Gender>
    <PatientLastName>TEST</PatientLastName>
    <PatientFirstName>ECG</PatientFirstName>
  </PatientDemographics>
  <TestDemographics>
    <DataType>RESTING</DataType>
    <AcquisitionDevice>MAC2000</AcquisitionDevice>
    <AcquisitionTime>08:15:30</AcquisitionTime>
    <AcquisitionDate>05-06-2024</AcquisitionDate>
  </TestDemographics>
  <RestingECGMeasurements>
    <VentricularRate>72</VentricularRate>
    <AtrialRate>72</AtrialRate>
    <PRInterval>152</PRInterval>
    <QRSDuration>88</QRSDuration>
    <QTInterval>380</QTInterval>
    <QTCorrected>416</QTCorrected>
    <PAxis>50</PAxis>
    <RAxis>45</RAxis>
    <TAxis>40</TAxis>
  </RestingECGMeasurements>
  <Diagnosis>
    <Modality>RESTING</Modality>
    <DiagnosisStatement>
      <StmtFlag>ENDSLINE</StmtFlag><StmtText>Normal sinus rhythm</StmtText>
    </DiagnosisStatement>
  </Diagnosis>
  <Waveform>
    <WaveformType>Rhythm</WaveformType>
    <WaveformStartTime>0</WaveformStartTime>
    <NumberofLeads>8</NumberofLeads>
    <SampleType>CONTINUOUS_SAMPLES</SampleType>
    <SampleBase>{rate}</SampleBase>
    <SampleExponent>0</SampleExponent>
    <HighPassFilter>16</HighPassFilter>
    <LowPassFilter>150</LowPassFilter>
    <ACFilter>50</ACFilter>
{leads}
  </Waveform>
</RestingECG>
""".encode("latin-1")


def csv_text(ecg: ECG, *, meta: str | None = "# sampling_rate={rate}; units=uV") -> bytes:
    names = list(ecg.leads)
    rows = [",".join(names)]
    matrix = np.column_stack([np.rint(ecg.leads[n] * 1000).astype(int) for n in names])
    rows += [",".join(str(v) for v in row) for row in matrix]
    head = [meta.format(rate=f"{ecg.sampling_rate:g}")] if meta else []
    return ("\n".join(head + rows) + "\n").encode()
