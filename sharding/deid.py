"""De-identification: the only data that leaves the source are the processed pixels and
the whitelisted fields of :func:`sample_record`.

No DICOM attribute value is copied (so nothing of the PS3.15 Annex E basic profile —
names, IDs, dates, accession numbers, institutions, physicians, UIDs, device serials… —
can reach the dataset). The patient is represented by a keyed hash
``HMAC-SHA256(secret, site ‖ patient identifier)``; the secret comes from the
environment (``LDISC_PATIENT_KEY_SECRET``) or a file, never from config, arguments or
logs. Text burnt into the pixels is out of scope.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

SECRET_ENV = "LDISC_PATIENT_KEY_SECRET"
MIN_SECRET_BYTES = 16
RECORD_FIELDS = frozenset({
    "id", "site", "modality", "source_format", "original_size", "patient_key", "preprocess",
})


class SecretMissing(RuntimeError):
    """No usable HMAC secret was provided."""


def load_secret(secret_file: str | os.PathLike | None = None) -> bytes:
    """The HMAC secret from ``secret_file`` if given, else from $LDISC_PATIENT_KEY_SECRET."""
    if secret_file is not None:
        try:
            secret = Path(secret_file).read_bytes().strip()
        except OSError as e:
            raise SecretMissing(f"cannot read the secret file: {e.strerror}") from None
        source = "the secret file"
    else:
        secret = os.environ.get(SECRET_ENV, "").strip().encode()
        source = f"${SECRET_ENV}"
        if not secret:
            raise SecretMissing(
                f"no patient-key secret: set ${SECRET_ENV} or pass --secret-file "
                "(refusing to ingest without a keyed pseudonym)")
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretMissing(f"the secret in {source} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


def patient_key(secret: bytes, site: str, patient_identifier: str) -> str:
    """Pseudonymous, site-scoped patient key (128 bits of HMAC-SHA256, hex)."""
    msg = site.encode() + b"\x00" + patient_identifier.encode("utf-8", "surrogateescape")
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()[:32]


def patient_identifier(dicom_patient_id: str | None, rel_path: str, non_dicom: str) -> str:
    """What identifies the patient: DICOM PatientID, else the file or its parent folder."""
    if dicom_patient_id:
        return "dicom:" + dicom_patient_id
    if non_dicom == "parent":
        parent = rel_path.rsplit("/", 1)[0] if "/" in rel_path else ""
        return "dir:" + parent
    return "file:" + rel_path


def sample_record(*, sample_id: str, site: str, modality: str, source_format: str,
                  original_size: tuple[int, int], patient_key: str, preprocess: dict) -> dict:
    """The per-sample JSON: whitelisted fields only (see :data:`RECORD_FIELDS`)."""
    record = {
        "id": sample_id, "site": site, "modality": modality, "source_format": source_format,
        "original_size": list(original_size), "patient_key": patient_key, "preprocess": preprocess,
    }
    assert set(record) == RECORD_FIELDS
    return record
