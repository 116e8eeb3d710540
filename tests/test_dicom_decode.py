"""DICOM decoding: the 'DICM' marker at offset 128 wins over any preamble (dual-personality files whose
preamble is a TIFF header), MONOCHROME1 polarity, the file's VOI window, a VOI LUT Sequence applied through
pydicom, and the patient key taken from PatientID. Files are built here with pydicom."""
from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from _data_fixtures import write_dicom
from sharding.decode import decode_file, sniff
from sharding.preprocess import to_uint8

RAMP = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (48, 1))       # dark left, bright right (raw)
TIFF_PREAMBLE = b"II*\x00\x08\x00\x00\x00" + b"\x00" * 120


def _dual_personality(path):
    data = bytearray(path.read_bytes())
    data[:128] = TIFF_PREAMBLE
    path.write_bytes(bytes(data))
    return path


def test_dual_personality_monochrome1_is_decoded_as_dicom(tmp_path):
    path = _dual_personality(write_dicom(tmp_path / "cr.dcm", RAMP, "MONOCHROME1", 12,
                                         {"PatientID": "PAT-123"}, window=(2048, 4096)))
    assert sniff(path.read_bytes()[:132]) == "dicom"
    dec = decode_file(path, 10**8)
    assert (dec.source_format, dec.photometric, dec.patient_id, dec.window) == ("dicom", "MONOCHROME1", "PAT-123",
                                                                                (2048.0, 4096.0))
    out, params = to_uint8(dec)
    assert params["window_source"] == "dicom" and params["inverted"] is True
    assert out[0, 0] == 255 and out[0, -1] == 0        # MONOCHROME1: low raw values are bright


def test_voi_lut_sequence_is_applied(tmp_path):
    path = write_dicom(tmp_path / "lut.dcm", RAMP, "MONOCHROME2", 12, {"PatientID": "PAT-9"}, window=None)
    ds = pydicom.dcmread(path)
    lut = (65535 - np.arange(4096) * 65535 // 4095).astype(np.uint16)            # an inverting 16-bit LUT
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])      # LUTDescriptor: entries, first mapped value, bits
    item.add_new(0x00283006, "US", lut.tolist())       # LUTData
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path)
    dec = decode_file(path, 10**8)
    out, params = to_uint8(dec)
    assert out[0, 0] == 255 and out[0, -1] == 0        # the LUT's inversion, not a linear window
    assert params["inverted"] is False and dec.patient_id == "PAT-9"
    assert np.all(np.diff(out[0].astype(int)) <= 0)
